"""A data key that the chosen preset does not read is refused, naming the preset to pick."""

from __future__ import annotations

import pytest

from qkvlab.errors import ConfigError
from tests.helpers import make_config


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.path=corpus.txt"],
         "data.path is read only by text corpora, but data=sort is a synthetic task; add data=text (or another corpus preset)"),
        (["data=copy", "data.tokenizer=bpe"],
         "data.tokenizer is read only by text corpora, but data=copy is a synthetic task; add data=text (or another corpus preset)"),
        (["data=sort", "data.num_pairs=4"], "data.num_pairs is read only by data=mqar, but data=sort is the sort task; add data=mqar or drop data.num_pairs"),
        (["data=text", "data.path=CORPUS", "data.val_size=64"],
         "data.val_size is read only by synthetic tasks, but data=text is a text corpus; drop data.val_size "
         "(data.val_tokens sets how much of a corpus is validation)"),
        (["data=text", "data.path=CORPUS", "data.num_keys=32"],
         "data.num_keys is read only by data=mqar, but data=text is a text corpus; add data=mqar or drop data.num_keys"),
        (["data=text", "data.path=CORPUS", "data.bpe_vocab_size=8192"],
         "data.bpe_vocab_size is read only by data.tokenizer=bpe, but data.tokenizer=byte; add data.tokenizer=bpe or drop data.bpe_vocab_size"),
    ],
)
def test_a_key_the_preset_does_not_read_is_refused(tmp_path, overrides, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text("text " * 100)
    with pytest.raises(ConfigError) as err:
        make_config(*[o.replace("CORPUS", str(corpus)) for o in overrides])
    assert str(err.value) == message


def test_keys_the_preset_reads_pass(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("text " * 100)
    make_config("data=mqar", "data.num_pairs=4", "data.val_size=64")
    make_config("data=text", f"data.path={corpus}", "data.tokenizer=bpe", "data.bpe_vocab_size=512", "data.val_tokens=128")
