"""End to end: `qkvlab train -m experiment=ci_smoke`, then `qkvlab compare`, then a re-run."""

from __future__ import annotations

import csv
import json

import pytest

from qkvlab.analysis.plots import PLOTS
from qkvlab.cli import CONF_DIR

# ci_smoke, made smaller still: the test is about the plumbing, not the numbers.
# Tiny models on a shared or 2-core machine: one torch thread per process avoids oversubscription.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# One seed: ci_smoke's second seed exercises nothing the first does not (tests/analysis covers n > 1).
FAST = ["hydra.sweeper.params.seed=0", "train.steps=4", "train.eval_every=2", "train.log_every=2", "train.checkpoint_every=2", "data.val_size=32"]
VARIANTS = sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml"))


@pytest.mark.slow
def test_ci_smoke_sweep_compare_and_rerun(run_cli, tmp_path):
    first = run_cli("train", "-m", "experiment=ci_smoke", *FAST, env_extra=ONE_THREAD)
    assert first.returncode == 0, first.stderr[-2000:]
    sweep = tmp_path / "outputs" / "ci_smoke"
    dirs = sorted(p for p in sweep.iterdir() if (p / "summary.json").exists())
    assert len(dirs) == len(VARIANTS)

    shown = run_cli("compare", str(sweep), env_extra=ONE_THREAD)
    assert shown.returncode == 0, shown.stderr[-2000:]
    rows = {r["variant"]: r for r in csv.DictReader(open(sweep / "compare" / "compare.csv"))}
    assert sorted(rows) == VARIANTS
    assert {r["n"] for r in rows.values()} == {"1"}
    assert float(rows["k_eq_v"]["kv_cache/reduction_vs_mha/mean"]) == pytest.approx(0.5)
    for name in PLOTS:
        assert (sweep / "compare" / name).stat().st_size > 5000
    for variant in VARIANTS:
        assert f"\n{variant} " in shown.stdout

    # A re-run skips what completed and resumes what did not: here a job that died after step 2.
    # Two of the variants: every skip costs a Hydra composition, and two show both paths.
    broken = next(d for d in dirs if d.name.startswith("mha-"))
    kept = next(d for d in dirs if d.name.startswith("k_eq_v-"))
    summary = json.loads((broken / "summary.json").read_text())
    (broken / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    for name in ("step_00000004.pt", "final.pt"):
        for path in (broken / "checkpoints").glob(name + "*"):
            path.unlink()
    again = run_cli("train", "-m", "experiment=ci_smoke", "variant=mha,k_eq_v", *FAST, env_extra=ONE_THREAD)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped, already completed:") == 1
    assert f"skipped, already completed: {kept}" in again.stdout
    assert f"resuming from {broken / 'checkpoints' / 'step_00000002.pt'} (step 2 of 4)" in again.stdout
    resumed = json.loads((broken / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["val/loss"] == summary["val/loss"]  # resume is exact on CPU
    assert sorted(p for p in sweep.iterdir() if (p / "summary.json").exists()) == dirs

    # A single run of the same config is the same directory.
    single = run_cli("train", "experiment=ci_smoke", "variant=k_eq_v", "seed=0", *reversed(FAST[1:]), env_extra=ONE_THREAD)
    assert single.returncode == 0, single.stderr[-2000:]
    assert "skipped, already completed:" in single.stdout
    assert single.stdout.strip().split(": ", 1)[1].split(" (")[0] in {str(d) for d in dirs}
