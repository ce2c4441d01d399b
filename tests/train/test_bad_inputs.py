"""Bad inputs get one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json

import pytest
from trainrun import ENV, TINY  # tests/train/trainrun.py

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "setup, override, expected",
    [
        (None, "train.resume=nowhere/step_00000010.pt", "train.resume='nowhere/step_00000010.pt' is not a checkpoint file"),
        (None, "train.keep_checkpoints=0", "train.keep_checkpoints=0 is out of range"),
        ("old_run_dir", "train.steps=5", "was written by an older qkvlab (format 0;"),
    ],
)
def test_one_line_and_exit_2(tmp_path, run_cli, setup, override, expected):
    if setup == "old_run_dir":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "run.json").write_text(json.dumps({"wandb_id": "abc"}))
    res = run_cli("train", *TINY, override, "hydra.run.dir=run", env_extra=ENV)
    assert res.returncode == 2
    line, = res.stderr.strip().splitlines()
    assert line.startswith("qkvlab: error: ") and expected in line
    if setup == "old_run_dir":
        assert not (tmp_path / "run" / "summary.json").exists(), "an older run directory is left as it was"
