"""A run directory keeps the results of one config: another config there is
refused by name (never resumed, skipped or relabelled) unless it starts afresh."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_a_different_config_in_a_used_directory_is_refused_naming_the_keys(tmp_path, run_cli, kit):
    run_dir = tmp_path / "x"
    first = run_cli("train", *kit.TINY, "train.steps=10", "optim.lr=3e-3", "hydra.run.dir=x", env_extra=kit.ENV)
    assert first.returncode == 0, first.stderr
    config_before = (run_dir / ".hydra" / "config.yaml").read_text()

    other = run_cli("train", *kit.TINY, "train.steps=10", "optim.lr=3e-2", "data=copy", "hydra.run.dir=x", env_extra=kit.ENV)
    assert other.returncode == 2
    line, = other.stderr.strip().splitlines()
    assert line == (
        f"qkvlab: error: {run_dir} was trained with a different config: data.name ('sort' -> 'copy'), "
        "data.task ('sort' -> 'copy'), optim.lr (0.003 -> 0.03); use a new directory, "
        "or train.resume=never to start it afresh with this config"
    )
    assert "val loss" not in other.stdout, "the sort results must not be printed as a copy-task run"
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config_before
    assert kit.summary(run_dir)["data"] == "sort"

    # Keys that cannot change a result may differ.
    same = run_cli("train", *kit.TINY, "train.steps=10", "optim.lr=3e-3", "train.checkpoint_every=3", "hydra.run.dir=x", env_extra=kit.ENV)
    assert same.returncode == 0, same.stderr

    fresh = run_cli(
        "train", *kit.TINY, "train.steps=10", "optim.lr=3e-2", "data=copy", "train.resume=never", "hydra.run.dir=x", env_extra=kit.ENV
    )
    assert fresh.returncode == 0, fresh.stderr
    assert kit.summary(run_dir)["data"] == "copy" and "lr: 0.03" in (run_dir / ".hydra" / "config.yaml").read_text()
