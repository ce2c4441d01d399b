"""Another run's trained weights, for the commands and training features that start from them.

`init_from`, distillation's teacher, `convert`, `eval` and `generate` all read a finished run the same
way: its saved config through `rundir` (the one run-directory reader) and its `checkpoints/final.pt`
through the verified checkpoint reader, so a torn or foreign file is refused in one line everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from qkvlab.checks import checked
from qkvlab.config import Config
from qkvlab.errors import ConfigError
from qkvlab.model import Transformer, build_model
from qkvlab.rundir import Run, load_run
from qkvlab.train.checkpoint import CHECKPOINTS, FINAL, CorruptCheckpoint, read_checkpoint

FINAL_CHECKPOINT = Path(CHECKPOINTS) / FINAL


@dataclass
class FinishedRun:
    run: Run
    cfg: Config
    payload: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return self.payload["vocab_size"]

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.payload["model"]

    @property
    def checkpoint(self) -> Path:
        return self.run.path / FINAL_CHECKPOINT

    def model(self, device: torch.device | str = "cpu") -> Transformer:
        """The run's model with its final weights, in eval mode."""
        model = build_model(self.cfg, self.vocab_size)
        model.load_state_dict(self.state)
        return model.to(device).eval()


def finished_run(run_dir: Path | str, what: str = "run directory") -> Run:
    """A finished run's directory, checked without loading its weights (what a sweep's start-up check can afford)."""
    run = load_run(run_dir)
    if not run.path.is_dir():
        raise ConfigError(f"{what} {run.path} does not exist")
    if not run.config:
        raise ConfigError(f"{run.path} has no .hydra/config.yaml; pass a run directory written by qkvlab train")
    path = run.path / FINAL_CHECKPOINT
    if not path.exists():
        raise ConfigError(f"{path} is missing; the run has not finished (status: {run.status})")
    return run


def read_finished_run(run_dir: Path | str, what: str = "run directory", merged: DictConfig | None = None) -> FinishedRun:
    """A finished run's config and final checkpoint, or a one-line ConfigError naming `what` was passed.

    `merged` replaces the run's saved config (the saved one plus a caller's checked overrides).
    """
    run = finished_run(run_dir, what)
    path = run.path / FINAL_CHECKPOINT
    try:
        payload = read_checkpoint(path)
    except CorruptCheckpoint as exc:
        raise ConfigError(f"{path} is {exc}; re-run training or resume it to rewrite the checkpoint") from None
    cfg = checked(merged if merged is not None else OmegaConf.create(run.config))
    return FinishedRun(run, cfg, payload)
