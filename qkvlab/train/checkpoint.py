"""Checkpoints, written atomically so a crash mid-write never leaves a torn file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from qkvlab.config import as_dict


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, trainer, step: int) -> None:
    atomic_torch_save(
        {
            "step": step,
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "config": as_dict(trainer.cfg),
            "vocab_size": trainer.info.vocab_size,
        },
        path,
    )
