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


def trains(path) -> bool:
    """Whether one training step on the checkpoint's weights has a finite loss and gradient norm."""
    import torch

    from qkvlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig, VariantConfig
    from qkvlab.data import build_data
    from qkvlab.model import build_model

    payload = read_checkpoint(path)
    c = payload["config"]
    cfg = Config(variant=VariantConfig(**c["variant"]), model=ModelConfig(**c["model"]), data=DataConfig(**c["data"]),
                 optim=OptimConfig(**c["optim"]), train=TrainConfig(**c["train"]), seed=c["seed"])
    model = build_model(cfg, payload["vocab_size"])
    model.load_state_dict(payload["model"])
    x, y = build_data(cfg).train_batch(payload["step"], 0)
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
    loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    return bool(loss.isfinite() and norm.isfinite())


def test_stop_policy_stops_at_the_first_nonfinite_step(tmp_path, run_cli, kit):
    res = run_cli("train", *kit.TINY, *EXPLODE, "train.on_nonfinite=stop", "hydra.run.dir=run", env_extra=kit.ENV)
    assert res.returncode == 3
    line, = res.stderr.strip().splitlines()
    assert "non-finite loss or gradients at step" in line and "train.on_nonfinite=stop" in line
    s = kit.summary(tmp_path / "run")
    assert s["status"] == "failed" and s["error"].startswith("Diverged: non-finite")
    (step, path), *_ = step_checkpoints(tmp_path / "run")
    assert step < s["step"] and finite_weights(path)
    # Step 1's update overflowed the weights: its checkpoint saves fine but cannot train, so it is not "good".
    assert not trains(path)
    assert "the last good checkpoint" not in line and f"no checkpoint is known good (no finite step has run on the weights in {path})" in line


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
