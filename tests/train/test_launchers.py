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


def submitit_tasks(folder) -> list[int]:
    """The pids of the submitit tasks running jobs whose files are under `folder`."""
    import os

    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in argv and any(str(folder).encode() in a for a in argv):
            pids.append(int(pid))
    return pids


@pytest.mark.slow
def test_a_two_task_submitit_job_trains_as_two_ranks_and_requeues_itself_on_submitits_signal(start_cli, tmp_path, kit):
    """hydra/launcher=submitit_local runs the launcher SLURM runs (tasks_per_node=2: two ranks). SIGUSR2,
    what SLURM sends before the time limit or on preemption, to every task: the ranks stop at one step,
    rank 0 checkpoints and submitit requeues the job, which resumes in its own run directory and ends
    with the metrics of an uninterrupted run."""
    import os
    import signal
    import time

    from qkvlab.checks import compose_config
    from qkvlab.train.run import run
    from tests.train.test_distributed import assert_same_rows

    needs("hydra_submitit_launcher")
    args = [*kit.TINY, "train.steps=60", "train.checkpoint_every=1000"]
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=60"]
    proc = start_cli("train", "-m", *args, "name=cluster", *launcher, env_extra=ONE_THREAD)
    sweep = tmp_path / "outputs" / "cluster"
    deadline = time.monotonic() + 120
    while not list(sweep.glob("*/metrics.jsonl")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    run_dir = next(sweep.glob("*/metrics.jsonl")).parent
    kit.wait_for_step(proc, run_dir, 5)
    tasks = submitit_tasks(sweep)
    assert len(tasks) == 2
    for pid in tasks:
        os.kill(pid, signal.SIGUSR2)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    log = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_0_log.*"))
    assert "qkvlab: stopped by SIGUSR2 at step" in log and "Requeued job" in log and "qkvlab: resuming from" in log, log[-3000:]
    summary = kit.summary(run_dir)
    assert (summary["status"], summary["world_size"], summary["parallel"]) == ("completed", 2, "ddp")
    run(compose_config(args), tmp_path / "one")
    assert_same_rows(kit.metrics(run_dir), kit.metrics(tmp_path / "one"))
