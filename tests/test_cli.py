"""The CLI end to end, in subprocesses, as a user runs it."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TINY = ["model=tiny", "train.steps=40", "train.eval_every=20", "train.log_every=10"]


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("summary.json"))


def test_single_run_writes_run_directory_and_learns(run_cli, tmp_path):
    proc = run_cli("train", "logger=none", *TINY)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = _run_dirs(tmp_path / "outputs")
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    assert train[-1] < train[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 40
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "checkpoints" / "final.pt").exists()
    assert "val ppl" in proc.stdout and str(run_dir.name) in proc.stdout
    # stderr is a pipe: plain progress lines, never a carriage-return bar
    assert "mha: step 40/40 (100%)" in proc.stderr and "\r" not in proc.stderr
    # Hydra's job log opens at the first warning: no empty train.log beside the results
    assert not (run_dir / "train.log").exists() or (run_dir / "train.log").stat().st_size > 0


def test_multirun_over_four_variants_gives_four_runs(run_cli, tmp_path):
    proc = run_cli("train", "-m", "variant=mha,q_eq_k,k_eq_v,q_eq_k_eq_v", "logger=none", *TINY, "train.progress=false")
    assert proc.returncode == 0, proc.stderr
    runs = _run_dirs(tmp_path / "outputs" / "default")  # outputs/<experiment>/<run id>
    variants = sorted(json.loads((r / "summary.json").read_text())["variant"] for r in runs)
    assert variants == ["k_eq_v", "mha", "q_eq_k", "q_eq_k_eq_v"]
    params = {json.loads((r / "summary.json").read_text())["variant"]: json.loads((r / "summary.json").read_text())["params/attention"] for r in runs}
    assert params["mha"] > params["k_eq_v"] > params["q_eq_k_eq_v"]


def test_wandb_offline_run_holds_val_ppl(run_cli, tmp_path):
    proc = run_cli("train", "logger=wandb", "logger.mode=auto", *TINY, "train.progress=false")
    assert proc.returncode == 0, proc.stderr
    assert "W&B is offline" in proc.stdout and "wandb sync" in proc.stdout
    (run_file,) = list((tmp_path / "outputs").rglob("offline-run-*/run-*.wandb"))
    blob = run_file.read_bytes()
    assert b"val/ppl" in blob and b"k_eq_v" not in blob[:0]
    assert b"mha-sort-s0" in blob  # the run name carries variant, task and seed


def test_help_lists_groups_and_cfg_prints_config(run_cli):
    help_out = run_cli("train", "--help").stdout
    from qkvlab.config import CONF_DIR

    variants = sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml"))
    assert "variant: " + ", ".join(variants) in help_out and "differential" in variants
    assert "model: " in help_out and "paper_300m" in help_out
    cfg_out = run_cli("train", "--cfg", "job", "variant=k_eq_v").stdout
    assert "sharing: k_eq_v" in cfg_out


def test_same_command_again_skips_and_resume_never_retrains(run_cli, tmp_path):
    args = ("train", "logger=none", "model=tiny", "train.steps=10", "train.eval_every=10", "train.progress=false")
    assert run_cli(*args).returncode == 0
    (run_dir,) = _run_dirs(tmp_path / "outputs")
    first = (run_dir / "summary.json").read_text()
    again = run_cli(*args)
    assert again.returncode == 0 and f"skipped, already completed: {run_dir}" in again.stdout
    assert f"{run_dir} (to train it again from scratch, add train.resume=never)" in again.stdout
    fresh = run_cli(*args, "train.resume=never")
    assert fresh.returncode == 0 and "skipped" not in fresh.stdout and "finished 10 steps" in fresh.stdout
    assert _run_dirs(tmp_path / "outputs") == [run_dir]
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows].count(10) == 2  # one train and one val row, not duplicated
    assert json.loads(first)["val/loss"] == json.loads((run_dir / "summary.json").read_text())["val/loss"]
