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
