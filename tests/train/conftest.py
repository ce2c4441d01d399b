"""Shared pieces of the training subprocess tests: a tiny, fast run and its outputs.

Tests reach them through the `kit` fixture: importing a conftest by name breaks
as soon as tests/ becomes a package."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

# Small enough that a step takes milliseconds on a loaded 2-core CPU; fp32, since runs are compared
# at fp32 tolerances, whatever precision=auto would pick on the machine.
TINY = [
    "model=tiny",
    "train.precision=fp32",
    "logger=none",
    "train.progress=false",
    "data.batch_size=8",
    "data.seq_len=16",
    "data.val_size=64",
    "train.log_every=5",
    "train.eval_every=10",
]
# One thread: faster under load, and every process of a test computes the same way.
ENV = {"OMP_NUM_THREADS": "1"}
# Fields that measure the machine, not the run.
VOLATILE = {"throughput/tokens_per_s", "wall_time_s"}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VOLATILE}


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    """Block until metrics.jsonl holds a row at `step` or later (the run is mid-training)."""
    path = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended before step {step} (rc {proc.returncode}): {out[-2000:]} {err[-2000:]}")
        if path.exists():
            lines = path.read_text().splitlines()
            if lines and lines[-1].endswith("}") and json.loads(lines[-1])["step"] >= step:
                return
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no metrics row at step {step} within {timeout}s")


@pytest.fixture
def kit() -> SimpleNamespace:
    return SimpleNamespace(
        TINY=TINY, ENV=ENV, metrics=metrics, summary=summary, stable=stable, wait_for_step=wait_for_step
    )
