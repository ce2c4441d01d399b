"""Which run directories are one run (qkvlab/analysis/duplicates.py)."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from qkvlab.analysis.duplicates import distinct
from qkvlab.rundir import load_run


def _run(path, run_id, config_hash, teacher):
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save({"seed": 0, "variant": {"name": "k_eq_v"}, "distill": {"teacher": str(teacher)}}, path / ".hydra" / "config.yaml")
    (path / "summary.json").write_text(json.dumps({"status": "completed", "val/loss": 1.0}))
    (path / "run.json").write_text(json.dumps({"wandb_id": run_id, "config_hash": config_hash}))
    return load_run(path)


def test_students_of_two_trainings_of_one_teacher_path_are_two_runs(tmp_path):
    """The teacher at that path was retrained between them: run.json's hashes differ, the saved configs do not."""
    teacher = tmp_path / "teacher"
    a = _run(tmp_path / "a", "aaaaaaaa", "11111111", teacher)
    b = _run(tmp_path / "b", "bbbbbbbb", "22222222", teacher)
    kept, dups = distinct([a, b])
    assert len(kept) == 2 and not dups
    c = _run(tmp_path / "c", "cccccccc", "11111111", teacher)
    kept, dups = distinct([a, b, c])
    assert len(kept) == 2 and [d.of.path for d in dups] == [a.path]
