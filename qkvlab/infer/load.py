"""A trained run back in memory: its config (plus overrides), model and device.

The config and weights are read by `train.from_run`, the one reader of a finished run; this layer adds
the overrides eval and generate accept and the device and precision they run at.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import OmegaConf

from qkvlab.config import Config
from qkvlab.errors import ConfigError
from qkvlab.data import MISSING, DataSource, build_data, check_same_data
from qkvlab.model import Transformer
from qkvlab.rundir import Run, load_run
from qkvlab.train.from_run import FINAL_CHECKPOINT, read_finished_run
from qkvlab.train.device import compute_dtype, inference_model, pick_device, resolve_precision

# What a trained run is: overriding any of these would score the weights with other token ids, another
# task or another model. (Scoring other text with the run's tokenizer is downstream evaluation's job.)
FIXED_PREFIXES = ("model.", "variant.")
FIXED = {"model", "variant", "data"} | {
    f"data.{k}" for k in ("name", "task", "causal", "path", "hub", "hub_config", "split", "text_field", "tokenizer",
                          "bpe_vocab_size", "max_tokens", "val_path", "num_pairs", "num_keys", "num_values")
}


@dataclass
class TrainedRun:
    run: Run
    cfg: Config
    model: Transformer
    device: torch.device
    precision: str
    step: int
    # What the checkpoint recorded of its data (MISSING: a checkpoint older than the record).
    data_identity: object = MISSING

    def amp(self):
        """Nothing to autocast: the model was cast once to the inference dtype (`inference_model`)."""
        return contextlib.nullcontext()

    def data(self, cfg: Config | None = None) -> DataSource:
        """The run's data (at `cfg`, e.g. another context length), refused unless it is what the run trained on."""
        data = build_data(cfg or self.cfg)
        check_same_data(self.data_identity, data, str(self.run.path / FINAL_CHECKPOINT), "train the run again")
        self.data_identity = data.identity  # an old checkpoint's note is said once; every context scores one corpus
        return data

    @property
    def dtype(self) -> torch.dtype:
        return compute_dtype(self.precision)


def run_overrides(run: Run, overrides: Sequence[str]):
    """The run's saved config merged with eval's or generate's overrides, refusing those that change what it is."""
    bad = [o for o in overrides if "=" not in o or o.startswith(("+", "~"))]
    if bad:
        raise ConfigError(f"override '{bad[0]}' is not key=value; e.g. train.device=cpu data.batch_size=16")
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if key in FIXED or key.startswith(FIXED_PREFIXES):
            hint = " (to score other text with the run's tokenizer: qkvlab eval RUN_DIR --data.path FILE)" if key == "data.path" else ""
            raise ConfigError(
                f"{o} would change the data, tokenizer or model this run trained with; "
                f"eval and generate always use the run's own: drop {key}{hint}"
            )
    return OmegaConf.merge(OmegaConf.create(run.config), OmegaConf.from_dotlist(list(overrides)))


def load_trained(run_dir: Path | str, overrides: Sequence[str] = ()) -> TrainedRun:
    run = load_run(run_dir)
    merged = run_overrides(run, overrides) if run.config else None
    finished = read_finished_run(run_dir, merged=merged)
    cfg = finished.cfg
    device = pick_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device, cfg.model.d_model)
    payload = finished.payload
    model = inference_model(finished.model(device), precision)
    return TrainedRun(finished.run, cfg, model, device, precision, payload["step"], payload.get("data", MISSING))
