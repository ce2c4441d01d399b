"""Resume: a run killed between checkpoints and started again ends exactly like
one that was never interrupted; a changed model refuses to resume."""

from __future__ import annotations

import signal

import pytest

from qkvlab.train.checkpoint import step_checkpoints

pytestmark = pytest.mark.slow


# The kill and restart path is the same for every family; test_loop.py resumes every variant in process.
@pytest.mark.parametrize("variant", ["mha", "k_eq_v_cla"])
def test_sigkill_between_checkpoints_then_resume_is_bit_identical(tmp_path, run_cli, start_cli, kit, variant):
    args = [*kit.TINY, f"variant={variant}", "train.steps=60", "train.checkpoint_every=20"]
    ref = run_cli("train", *args, "hydra.run.dir=ref", env_extra=kit.ENV)
    assert ref.returncode == 0, ref.stderr

    proc = start_cli("train", *args, "hydra.run.dir=killed", env_extra=kit.ENV)
    killed = tmp_path / "killed"
    kit.wait_for_step(proc, killed, 25)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    latest = step_checkpoints(killed)[0][0]
    logged = max(r["step"] for r in kit.metrics(killed))
    assert latest == 20 and logged > latest, "the kill must land between two checkpoints"

    again = run_cli("train", *args, "hydra.run.dir=killed", env_extra=kit.ENV)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {killed / 'checkpoints' / 'step_00000020.pt'} (step 20 of 60)" in again.stdout

    ref_rows, got_rows = kit.metrics(tmp_path / "ref"), kit.metrics(killed)
    assert [kit.stable(r) for r in got_rows] == [kit.stable(r) for r in ref_rows]
    assert kit.stable(kit.summary(killed)) == kit.stable(kit.summary(tmp_path / "ref"))
    assert kit.summary(killed)["status"] == "completed"
    # W&B would continue the same run: the id survives in the run directory.
    assert (killed / "run.json").read_text().count("wandb_id") == 1


def test_resume_with_a_changed_model_names_the_keys(tmp_path, run_cli, kit):
    first = run_cli("train", *kit.TINY, "train.steps=5", "train.checkpoint_every=5", "hydra.run.dir=run", env_extra=kit.ENV)
    assert first.returncode == 0, first.stderr
    again = run_cli(
        "train", *kit.TINY, "train.steps=10", "model.d_model=32", "model.n_heads=2", "hydra.run.dir=run", env_extra=kit.ENV
    )
    assert again.returncode == 2
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in again.stderr
    assert "model.d_model (64 -> 32)" in lines[0] and "model.n_heads (4 -> 2)" in lines[0]
    assert "train.resume=never" in lines[0]
