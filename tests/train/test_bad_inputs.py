"""Bad inputs get one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import subprocess

import pytest

from qkvlab.cli import main


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.resume=nowhere/step_00000010.pt", "train.resume='nowhere/step_00000010.pt' is not a checkpoint file"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints=0 is out of range"),
        ("train.on_nonfinite=ignore", "train.on_nonfinite='ignore' is not valid; choose one of: skip, stop"),
        ("train.parallel=zero3", "train.parallel='zero3' is not valid; choose one of: auto, none, ddp, fsdp"),
        ("train.parallel=fsdp", "train.parallel=fsdp needs torchrun, which sets WORLD_SIZE (it is not set)"),
        ("train.parallel=ddp", "train.parallel=ddp needs torchrun, which sets WORLD_SIZE (it is not set)"),
    ],
)
def test_checked_before_any_job_starts(tmp_path, monkeypatch, capsys, override, expected, kit):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["train", *kit.TINY, override])
    assert exit_.value.code == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("qkvlab: error: ") and expected in line


@pytest.mark.slow
def test_run_directory_from_an_older_version_is_left_alone(tmp_path, run_cli, kit):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"wandb_id": "abc"}))
    res = run_cli("train", *kit.TINY, "train.steps=5", "hydra.run.dir=run", env_extra=kit.ENV)
    assert res.returncode == 2
    line, = res.stderr.strip().splitlines()
    assert "run directory" in line and "was written by an older qkvlab (format 0;" in line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "run.json"]


@pytest.mark.slow
@pytest.mark.parametrize("multirun", [False, True])
def test_a_file_in_the_way_of_the_run_directory_is_one_line(tmp_path, run_cli, kit, multirun):
    (tmp_path / "blocker").write_text("not a directory")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    res = run_cli("train", *(["-m", "seed=0,1"] if multirun else []), *kit.TINY, "train.steps=3", f"{key}=blocker/runs", env_extra=kit.ENV)
    assert res.returncode == 2
    line, = res.stderr.strip().splitlines()
    assert line == f"qkvlab: error: cannot create the run directory blocker/runs: blocker is a file, not a directory; choose another {key} or fix the path"


@pytest.mark.slow
def test_a_read_only_file_system_is_one_line(tmp_path, run_cli, kit):
    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a read-only tmpfs needs root; as a user, chmod would do (as root it does not stop writes)")
    try:
        res = run_cli("train", *kit.TINY, "train.steps=3", "hydra.run.dir=ro/run", env_extra=kit.ENV)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert res.returncode == 2
    line, = res.stderr.strip().splitlines()
    assert line == "qkvlab: error: cannot create the run directory ro/run: read-only file system; choose another hydra.run.dir or fix the path"
