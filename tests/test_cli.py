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


def _run_record_holds(blob: bytes, field: str, value: str) -> bool:
    """Whether a W&B offline file holds `value` as the run record's `field` (protobuf: key, length, bytes)."""
    from wandb.proto import wandb_internal_pb2 as pb

    number, data = pb.RunRecord.DESCRIPTOR.fields_by_name[field].number, value.encode()
    assert len(data) < 128  # a one-byte length
    return bytes([number << 3 | 2, len(data)]) + data in blob


def test_a_named_sweep_has_its_own_folder_w_and_b_group_run_names_and_one_upload_command(run_cli, tmp_path):
    import shlex
    import subprocess

    fast = ["data.seq_len=16", "data.batch_size=8", "data.val_size=32", "train.log_every=2", "train.eval_every=2"]
    proc = run_cli("train", "-m", "name=my_study", "train.steps=2,4", "logger=wandb", *fast, "train.progress=false",
                   env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    runs = _run_dirs(tmp_path / "outputs")
    assert [r.parent for r in runs] == [tmp_path / "outputs" / "my_study"] * 2
    names = set()
    for run in runs:
        steps = json.loads((run / "summary.json").read_text())["step"]
        (blob,) = [f.read_bytes() for f in run.glob("wandb/offline-run-*/run-*.wandb")]
        name = " ".join([run.name, f"train.steps={steps}", *fast])
        assert _run_record_holds(blob, "display_name", name), name
        assert _run_record_holds(blob, "run_group", "my_study") and _run_record_holds(blob, "tags", f"train.steps={steps}")
        names.add(name)
    assert len(names) == 2

    said = [line for line in proc.stdout.splitlines() if "wandb sync" in line]
    assert len(said) == 1 and said[0].startswith("qkvlab: W&B is offline; upload this sweep's 2 runs with: wandb sync ")
    command = shlex.split(said[0].split(" with: ", 1)[1])
    assert all((tmp_path / p).is_dir() for p in command[2:]) and len(command) == 4
    dry = subprocess.run([*command, "--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "Would sync 2 run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
