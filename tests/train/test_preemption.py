"""SIGTERM/SIGINT: a checkpoint at the next step boundary, a distinct exit code,
one line with the command that resumes, and no half-written file."""

from __future__ import annotations

import shlex
import signal

import pytest

from qkvlab.train.checkpoint import read_checkpoint, step_checkpoints

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_and_says_how_to_resume(tmp_path, start_cli, run_cli, sig, code, kit):
    args = [*kit.TINY, "train.steps=150", "train.checkpoint_every=1000"]
    proc = start_cli("train", *args, "hydra.run.dir=run", env_extra=kit.ENV)
    run_dir = tmp_path / "run"
    kit.wait_for_step(proc, run_dir, 5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err

    (step, path), = step_checkpoints(run_dir)
    assert 5 <= step < 150 and read_checkpoint(path)["step"] == step
    assert kit.summary(run_dir)["status"] == "interrupted"
    assert not list(run_dir.rglob("*.tmp"))
    hint = [line for line in out.splitlines() if "resume with:" in line]
    assert len(hint) == 1 and f"at step {step}" in hint[0], out
    command = shlex.split(hint[0].split("resume with: ", 1)[1])
    assert command[:2] == ["qkvlab", "train"] and f"hydra.run.dir={run_dir.resolve()}" in command
    if sig != signal.SIGTERM:
        return

    resumed = run_cli(*command[1:], env_extra=kit.ENV)
    assert resumed.returncode == 0, resumed.stderr
    steps = [r["step"] for r in kit.metrics(run_dir) if "train/loss" in r]
    assert steps == list(range(5, 151, 5)), "each step is logged once, before and after the stop"
    assert kit.summary(run_dir)["status"] == "completed"



def test_a_signal_during_a_long_evaluation_stops_it_and_the_resumed_run_evaluates_that_step(tmp_path, start_cli, run_cli, kit):
    """The evaluation is abandoned, not waited for; the checkpoint remembers it is owed, and the
    resumed run evaluates that step first, so metrics.jsonl reads as if nothing had happened."""
    args = [*kit.TINY, "train.steps=10", "train.eval_every=10", "train.checkpoint_every=1000", "data.val_size=40000"]
    proc = start_cli("train", *args, "hydra.run.dir=run", env_extra=kit.ENV)
    run_dir = tmp_path / "run"
    # The train row at step 10 is written just before its evaluation (5,000 batches) starts, and the
    # evaluation checks for a stop before every batch, so the signal always lands inside it.
    kit.wait_for_step(proc, run_dir, 10)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    rows = kit.metrics(run_dir)
    assert rows[-1]["step"] == 10 and "train/loss" in rows[-1] and not any("val/loss" in r for r in rows), "evaluation was not abandoned"
    (step, _), = step_checkpoints(run_dir)
    assert step == 10 and "stopped by SIGTERM at step 10" in out

    resumed = run_cli("train", *args, "hydra.run.dir=run", env_extra=kit.ENV)
    assert resumed.returncode == 0, resumed.stderr
    rows = kit.metrics(run_dir)
    assert [(r["step"], "val/loss" in r) for r in rows] == [(5, False), (10, False), (10, True)]
    assert kit.summary(run_dir)["status"] == "completed" and kit.summary(run_dir)["val/loss"] == rows[-1]["val/loss"]
