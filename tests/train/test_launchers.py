"""The launcher plugins (pip install 'qkvlab[sweep]') each run a two-job sweep for real."""

from __future__ import annotations

import importlib.util

import pytest

# Tiny models on a shared or 2-core machine: one torch thread per process avoids oversubscription.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
FAST = ["experiment=ci_smoke", "variant=mha,k_eq_v", "seed=0", "train.steps=2", "train.eval_every=2", "data.val_size=32"]


def needs(plugin: str) -> None:
    if importlib.util.find_spec(f"hydra_plugins.{plugin}") is None:
        pytest.skip(f"{plugin} is not installed; pip install 'qkvlab[sweep]' to test it")


def completed_runs(tmp_path) -> list[str]:
    sweep = tmp_path / "outputs" / "ci_smoke"
    summaries = sorted(sweep.glob("*/summary.json"))
    return sorted(p.parent.name.split("-")[0] for p in summaries if '"completed"' in p.read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "plugin, launcher",
    [
        ("hydra_joblib_launcher", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
        ("hydra_submitit_launcher", ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]),
    ],
    ids=["joblib", "submitit_local"],
)
def test_launcher_runs_a_two_job_sweep(run_cli, tmp_path, plugin, launcher):
    needs(plugin)
    out = run_cli("train", "-m", *FAST, *launcher, env_extra=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-2000:]
    assert completed_runs(tmp_path) == ["k_eq_v", "mha"]


def writer_of(path) -> int | None:
    """The pid of the process that has `path` open (the job training into that run directory)."""
    import os

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_a_joblib_job_killed_like_the_oom_killer_does_leaves_the_others_running(start_cli, tmp_path):
    """A killed job is reported in the failure table; the jobs beside it and after it complete."""
    import json
    import os
    import signal
    import time

    needs("hydra_joblib_launcher")
    args = ["experiment=ci_smoke", "variant=mha", "seed=0,1,2", "train.steps=150", "train.log_every=5",
            "train.eval_every=100", "train.checkpoint_every=50", "data.val_size=32", "train.progress=false"]
    proc = start_cli("train", "-m", *args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", env_extra=ONE_THREAD)
    sweep = tmp_path / "outputs" / "ci_smoke"
    deadline, victim = time.monotonic() + 180, None
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        for metrics in sweep.glob("mha-sort-s1-*/metrics.jsonl"):
            lines = metrics.read_text().splitlines()
            if lines and lines[-1].endswith("}") and json.loads(lines[-1])["step"] >= 10:
                victim = writer_of(metrics.resolve())
        time.sleep(0.05)
    assert victim, "job seed=1 never reached step 10"
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    status = {p.parent.name.split("-")[2]: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert status["s0"]["status"] == status["s2"]["status"] == "completed", out[-2000:]
    assert status["s1"]["status"] == "failed" and "SIGKILL" in status["s1"]["error"]
    table = out[out.index("1 of 3 jobs did not complete"):]
    assert "mha-sort-s1-" in table and "SIGKILL" in table
