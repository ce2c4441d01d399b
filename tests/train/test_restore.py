"""Where a run resumes from, and what its run directory looks like afterwards."""

from __future__ import annotations

import json

import pytest
import torch

from qkvlab.config import Config
from qkvlab.train.checkpoint import CheckpointError, step_checkpoints
from qkvlab.train.loop import Trainer
from qkvlab.train.resume import restore


def tiny(**train) -> Config:
    cfg = Config()
    cfg.train.device, cfg.train.steps, cfg.data.batch_size, cfg.data.val_size = "cpu", 40, 8, 16
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


@pytest.fixture
def run_dir(tmp_path):
    """Checkpoints at steps 10, 20 and 30, and metrics rows up to step 35 (killed after 30)."""
    trainer = Trainer(tiny(keep_checkpoints=5), tmp_path)
    for step in (10, 20, 30):
        trainer.state.step = step
        with torch.no_grad():
            next(trainer.model.parameters()).add_(1.0)
        trainer.save()
    rows = [{"step": s, "tokens": s * 128, "train/loss": 1.0 / s} for s in range(5, 40, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 40, "tok')
    return tmp_path


def steps_in(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_auto_skips_a_damaged_newest_and_rewinds(run_dir):
    newest = run_dir / "checkpoints" / "step_00000030.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    said = []
    trainer = Trainer(tiny(), run_dir)
    used = restore(trainer, run_dir, say=said.append)
    assert used.name == "step_00000020.pt" and trainer.state.step == 20
    assert "corrupt: truncated" in said[0] and said[1].startswith("qkvlab: resuming from")
    assert [s for s, _ in step_checkpoints(run_dir)] == [20, 10], "the damaged checkpoint no longer takes a slot"
    assert steps_in(run_dir) == [5, 10, 15, 20], "rows after the resume point (and the torn line) are gone"


def test_an_explicit_older_checkpoint_drops_the_abandoned_later_ones(run_dir):
    cfg = tiny(resume=str(run_dir / "checkpoints" / "step_00000010.pt"))
    trainer = Trainer(cfg, run_dir)
    restore(trainer, run_dir, say=lambda _: None)
    assert trainer.state.step == 10 and [s for s, _ in step_checkpoints(run_dir)] == [10]
    assert steps_in(run_dir) == [5, 10]


def test_never_starts_fresh(run_dir):
    said = []
    assert restore(Trainer(tiny(resume="never"), run_dir), run_dir, say=said.append) is None
    assert step_checkpoints(run_dir) == [] and steps_in(run_dir) == []
    assert "removed 3 old checkpoint(s)" in said[0]


def test_a_checkpoint_beyond_train_steps_is_refused(run_dir):
    with pytest.raises(CheckpointError, match=r"at step 30, beyond train.steps=25"):
        restore(Trainer(tiny(steps=25), run_dir), run_dir, say=lambda _: None)


def test_a_checkpoint_from_another_run_brings_its_history(run_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("continued")
    cfg = tiny(resume=str(run_dir / "checkpoints" / "step_00000020.pt"))
    trainer = Trainer(cfg, target)
    restore(trainer, target, say=lambda _: None)
    assert trainer.state.step == 20 and steps_in(target) == [5, 10, 15, 20]
    assert [s for s, _ in step_checkpoints(run_dir)] == [30, 20, 10], "the source run is left as it was"


def test_a_token_budget_run_resumes_past_the_default_step_count(tmp_path):
    """train.steps comes from train.tokens_per_param once the model exists; resuming checks against that."""
    trainer = Trainer(tiny(steps=300, tokens_per_param=20.0), tmp_path)
    assert trainer.cfg.train.steps > 400
    trainer.state.step = 400
    trainer.save()
    resumed = Trainer(tiny(steps=300, tokens_per_param=20.0), tmp_path)
    assert restore(resumed, tmp_path, say=lambda _: None).name == "step_00000400.pt"
    assert resumed.state.step == 400


def test_a_malformed_line_mid_file_is_named_and_no_valid_row_is_lost(tmp_path):
    """12 rows with garbage on line 5, resumed from step 10: every row up to step 10 stays, line 5 is reported."""
    trainer = Trainer(tiny(), tmp_path)
    trainer.state.step = 10
    trainer.save()
    lines = [json.dumps({"step": s, "tokens": s * 128}) for s in range(1, 13)]
    lines[4] = "#garbage from an editor"
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    said = []
    restore(Trainer(tiny(), tmp_path), tmp_path, say=said.append)
    assert steps_in(tmp_path) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    bad = [s for s in said if "line 5" in s]
    assert len(bad) == 1 and str(tmp_path / "metrics.jsonl") in bad[0] and "#garbage" in bad[0], said


def test_a_torn_last_line_is_dropped_without_a_warning(run_dir):
    said = []
    restore(Trainer(tiny(), run_dir), run_dir, say=said.append)
    assert steps_in(run_dir) == [5, 10, 15, 20, 25, 30]
    assert not [s for s in said if "metrics.jsonl line" in s], said
