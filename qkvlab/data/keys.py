"""Which data keys each kind of data reads, so a key that the chosen preset would ignore is refused.

`qkvlab train data.path=corpus.txt` without `data=text` used to train the default
sort task and never read the file. A key counts as set when it differs from the
schema default (qkvlab/config.py DataConfig); the presets set only keys they read.
"""

from __future__ import annotations

from dataclasses import fields

from qkvlab.config import DataConfig
from qkvlab.errors import ConfigError

SYNTHETIC_ONLY = ("val_size", "val_seed", "train_size")
MQAR_ONLY = ("num_pairs", "num_keys", "num_values")
TEXT_ONLY = ("path", "hub", "hub_config", "split", "text_field", "streaming", "tokenizer", "bpe_vocab_size", "val_tokens",
             "val_path", "max_tokens", "num_proc")
_DEFAULTS = DataConfig()


def set_keys(d: DataConfig) -> list[str]:
    return [f.name for f in fields(DataConfig) if getattr(d, f.name) != getattr(_DEFAULTS, f.name)]


def check_keys(d: DataConfig, synthetic: bool) -> None:
    for key in set_keys(d):
        if synthetic and key in TEXT_ONLY:
            raise ConfigError(
                f"data.{key} is read only by text corpora, but data={d.name} is a synthetic task; "
                "add data=text (or another corpus preset)"
            )
        if key in MQAR_ONLY and d.task != "mqar":
            kind = "a text corpus" if not synthetic else f"the {d.task} task"
            raise ConfigError(f"data.{key} is read only by data=mqar, but data={d.name} is {kind}; add data=mqar or drop data.{key}")
        if not synthetic and key in SYNTHETIC_ONLY:
            hint = " (data.val_tokens sets how much of a corpus is validation)" if key == "val_size" else ""
            raise ConfigError(
                f"data.{key} is read only by synthetic tasks, but data={d.name} is a text corpus; drop data.{key}{hint}"
            )
        if key == "bpe_vocab_size" and not synthetic and d.tokenizer != "bpe":
            raise ConfigError(
                f"data.bpe_vocab_size is read only by data.tokenizer=bpe, but data.tokenizer={d.tokenizer}; "
                "add data.tokenizer=bpe or drop data.bpe_vocab_size"
            )
