"""What summary.json says matches what the directory holds: a fresh start that
is killed never leaves "completed" behind, and an unreadable summary is an
unfinished run, not a crash."""

from __future__ import annotations

import signal
import time

import pytest

pytestmark = pytest.mark.slow


def only_run(root):
    run_dir, = (p.parent for p in root.glob("outputs/default/*/.hydra"))
    return run_dir


def test_a_killed_fresh_start_is_trained_again_not_skipped(tmp_path, run_cli, start_cli, kit):
    args = [*kit.TINY, "train.steps=40", "train.checkpoint_every=10"]
    first = run_cli("train", *args, env_extra=kit.ENV)
    assert first.returncode == 0, first.stderr
    run_dir = only_run(tmp_path)

    proc = start_cli("train", *args, "train.resume=never", env_extra=kit.ENV)
    final = run_dir / "checkpoints" / "final.pt"
    deadline = time.monotonic() + 120
    while (final.exists() or not (run_dir / "checkpoints" / "step_00000010.pt").exists()) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the fresh start has removed the old checkpoints and written its first one
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert kit.summary(run_dir)["status"] != "completed"

    again = run_cli("train", *args, env_extra=kit.ENV)
    assert again.returncode == 0, again.stderr
    assert "skipped, already completed" not in again.stdout and "val loss" in again.stdout
    assert kit.summary(run_dir)["status"] == "completed"
    evaluated = run_cli("eval", str(run_dir), env_extra=kit.ENV)
    assert evaluated.returncode == 0, evaluated.stderr


def test_an_empty_summary_is_an_unfinished_run_that_resumes(tmp_path, run_cli, kit):
    args = [*kit.TINY, "train.steps=10", "train.checkpoint_every=5"]
    assert run_cli("train", *args, env_extra=kit.ENV).returncode == 0
    run_dir = only_run(tmp_path)
    (run_dir / "summary.json").write_text("")
    again = run_cli("train", *args, env_extra=kit.ENV)
    assert again.returncode == 0, again.stderr
    assert f"qkvlab: {run_dir / 'summary.json'} is unreadable (empty); treating the run as unfinished" in again.stdout
    assert "resuming from" in again.stdout and kit.summary(run_dir)["status"] == "completed"


def test_a_sweep_with_an_unreadable_summary_completes_and_reports(tmp_path, run_cli, kit):
    args = ["-m", *kit.TINY, "train.steps=5", "seed=0,1", "hydra.sweep.dir=sweep", "hydra.sweep.subdir=s${seed}"]
    assert run_cli("train", *args, env_extra=kit.ENV).returncode == 0
    (tmp_path / "sweep" / "s1" / "summary.json").write_text('{"status": "comp')
    again = run_cli("train", *args, env_extra=kit.ENV)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr and "all 2 jobs completed" in again.stdout
    assert "not valid JSON at line 1); treating the run as unfinished" in again.stdout
