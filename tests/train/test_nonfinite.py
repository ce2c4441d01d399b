"""Divergence: an absurd learning rate makes the loss non-finite; both policies
end with one clear line, exit 3, and leave the last good checkpoint."""

from __future__ import annotations

import math

import pytest

from qkvlab.train.checkpoint import read_checkpoint, step_checkpoints

pytestmark = pytest.mark.slow

# Steps of size ~1e30 overflow the weights after one update.
EXPLODE = ["optim.lr=1e30", "optim.warmup_steps=0", "train.steps=30", "train.log_every=1", "train.checkpoint_every=1"]


def finite_weights(path) -> bool:
    return all(bool(t.isfinite().all()) for t in read_checkpoint(path)["model"].values())


def test_stop_policy_stops_at_the_first_nonfinite_step(tmp_path, run_cli, kit):
    res = run_cli("train", *kit.TINY, *EXPLODE, "train.on_nonfinite=stop", "hydra.run.dir=run", env_extra=kit.ENV)
    assert res.returncode == 3
    line, = res.stderr.strip().splitlines()
    assert "non-finite loss or gradients at step" in line and "train.on_nonfinite=stop" in line
    s = kit.summary(tmp_path / "run")
    assert s["status"] == "failed" and s["error"].startswith("Diverged: non-finite")
    (step, path), *_ = step_checkpoints(tmp_path / "run")
    assert f"the last good checkpoint is {path}" in line and step < s["step"] and finite_weights(path)


def test_skip_policy_counts_skipped_steps_then_stops_after_n_in_a_row(tmp_path, run_cli, kit):
    res = run_cli("train", *kit.TINY, *EXPLODE, "train.on_nonfinite=skip", "train.max_nonfinite=4", "hydra.run.dir=run", env_extra=kit.ENV)
    assert res.returncode == 3
    line, = res.stderr.strip().splitlines()
    assert "(4 steps in a row, train.on_nonfinite=skip)" in line
    rows = [r for r in kit.metrics(tmp_path / "run") if "train/loss" in r]
    skipped = [r["train/nonfinite_skipped"] for r in rows]
    assert skipped[0] == 0 and skipped[-3:] == [1, 2, 3]
    assert math.isfinite(rows[0]["train/loss"]) and rows[-1]["train/loss"] == "nan"
    # A skipped step never touches the weights, so every checkpoint kept is finite.
    assert all(finite_weights(p) for _, p in step_checkpoints(tmp_path / "run"))
