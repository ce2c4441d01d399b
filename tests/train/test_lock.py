"""One process per run directory: a second one is refused in one line and
touches nothing; a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal

import pytest

from qkvlab.train.checkpoint import read_checkpoint, step_checkpoints
from qkvlab.runlock import hold

pytestmark = pytest.mark.slow


def snapshot(run_dir):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*"))}


def test_a_second_process_is_refused_and_the_first_completes_with_everything(tmp_path, start_cli, run_cli, kit):
    args = [*kit.TINY, "train.steps=40", "train.checkpoint_every=10", "hydra.run.dir=run"]
    run_dir = tmp_path / "run"
    first = start_cli("train", *args, env_extra=kit.ENV)
    kit.wait_for_step(first, run_dir, 10)
    first.send_signal(signal.SIGSTOP)  # holds the lock, mid-run, while the second one tries
    try:
        before = snapshot(run_dir)
        second = run_cli("train", *args, env_extra=kit.ENV)
        after = snapshot(run_dir)
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert second.returncode == 2, second.stderr
    line, = second.stderr.strip().splitlines()
    assert line.startswith(f"qkvlab: error: run directory {run_dir} is in use by pid {first.pid} on {os.uname().nodename} (since ")
    assert "another directory" in line
    assert after == before, "the refused process must not write anything in the directory"
    assert first.returncode == 0, err
    rows = kit.metrics(run_dir)
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(5, 41, 5))
    assert [r["step"] for r in rows if "val/loss" in r] == [10, 20, 30, 40]
    assert kit.summary(run_dir)["status"] == "completed"
    assert [s for s, _ in step_checkpoints(run_dir)] == [40, 30]
    assert read_checkpoint(run_dir / "checkpoints" / "final.pt")["step"] == 40


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, start_cli, run_cli, kit):
    args = [*kit.TINY, "train.steps=40", "train.checkpoint_every=10", "hydra.run.dir=run"]
    run_dir = tmp_path / "run"
    proc = start_cli("train", *args, env_extra=kit.ENV)
    kit.wait_for_step(proc, run_dir, 15)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert (run_dir / ".lock").exists()
    again = run_cli("train", *args, env_extra=kit.ENV)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout and kit.summary(run_dir)["status"] == "completed"


def test_a_busy_sweep_job_is_reported_and_the_others_run(tmp_path, run_cli, kit):
    busy = tmp_path / "sweep" / "s1"
    busy.mkdir(parents=True)
    with hold(busy):  # this test's process holds job seed=1's directory
        res = run_cli(
            "train", "-m", *kit.TINY, "train.steps=5", "seed=0,1", "hydra.sweep.dir=sweep", "hydra.sweep.subdir=s${seed}",
            env_extra=kit.ENV,
        )
    assert res.returncode == 1, res.stderr
    assert kit.summary(tmp_path / "sweep" / "s0")["status"] == "completed"
    assert sorted(p.name for p in busy.iterdir()) == [".lock"]
    table = res.stdout[res.stdout.index("1 of 2 jobs did not complete"):].splitlines()
    assert table[2].split()[:2] == ["s1", "busy"] and f"in use by pid {os.getpid()}" in table[2]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "sweep" / ".qkvlab-refused").exists()
