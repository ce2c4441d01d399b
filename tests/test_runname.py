"""Content-addressed run directories: the same config, the same directory."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from qkvlab.cli import CONF_DIR
from qkvlab.config import register_configs
from qkvlab.runname import run_id


@pytest.fixture(scope="module")
def job_id():
    register_configs()

    def _id(*overrides: str) -> str:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
        return run_id(OmegaConf.to_container(cfg, resolve=True))

    return _id


def test_same_config_same_directory_however_spelled(job_id):
    a = job_id("variant=k_eq_v", "seed=1", "optim.lr=0.001")
    assert a == job_id("optim.lr=1e-3", "seed=1", "variant=k_eq_v")
    assert a == job_id("optim.lr=1e-3", "seed=1", "variant=k_eq_v", "model=tiny")  # the default, spelled out
    assert a.startswith("k_eq_v-sort-s1-")


def test_result_changing_keys_change_it_watching_keys_do_not(job_id):
    base = job_id("variant=mha")
    assert job_id("variant=mha", "seed=1") != base
    assert job_id("variant=mha", "optim.lr=0.01") != base
    assert job_id("variant=mha", "train.steps=301") != base
    assert job_id("variant=mha", "logger=none") == base
    assert job_id("variant=mha", "train.progress=false") == base
    # One process and DDP compute the same steps: a run resumes in its directory at another world size.
    assert job_id("variant=mha", "train.parallel=ddp") == job_id("variant=mha", "train.parallel=none") == base


def test_presets_put_runs_under_their_experiment(tmp_path):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=ci_smoke", "variant=gqa"], return_hydra_config=True)
    import qkvlab.runname  # noqa: F401  the resolver

    assert str(cfg.hydra.run.dir).startswith("outputs/ci_smoke/gqa-sort-s0-")
    assert str(cfg.hydra.sweep.dir) == "outputs/ci_smoke"
    assert cfg.hydra.run.dir.endswith(cfg.hydra.sweep.subdir)  # a single run and a sweep job share the directory


def test_the_study_name_files_a_run_but_does_not_change_its_hash(job_id):
    base = job_id("variant=mha")
    assert job_id("variant=mha", "name=my_study") == base
    assert job_id("variant=mha", "experiment=ci_smoke").rsplit("-", 1)[1] != base.rsplit("-", 1)[1]  # the preset's settings do


def _labels(*overrides: str) -> tuple[str, list[str]]:
    from qkvlab.runname import wandb_labels

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return wandb_labels(OmegaConf.to_container(cfg, resolve=True), overrides)


def test_two_configs_that_differ_get_different_wandb_names():
    (long, long_tags), (short, short_tags) = _labels("train.steps=300"), _labels("train.steps=100")
    assert long != short
    assert short.startswith("mha-sort-s0-") and short.endswith(" train.steps=100")
    assert short_tags == ["train.steps=100"] and long_tags == ["train.steps=300"]
    # The same overrides on a different base (a preset, or an edited config file) still differ, by the hash.
    assert _labels("experiment=ci_smoke", "train.steps=100")[0] != short


def test_wandb_labels_name_what_varies_not_where_it_is_filed_or_how_it_is_watched():
    name, tags = _labels(
        "experiment=ci_smoke", "name=my_study", "variant=k_eq_v", "seed=1", "optim.lr=1e-3",
        "variant.qk_norm=true", "logger.mode=offline", "train.progress=false", "hydra.job.name=x",
    )
    assert name.split(" ", 1)[1] == "optim.lr=0.001 variant.qk_norm=true"  # variant and seed are in the first part
    assert name.split(" ", 1)[0].startswith("k_eq_v-sort-s1-")
    assert tags == ["variant=k_eq_v", "seed=1", "optim.lr=0.001", "variant.qk_norm=true"]


def test_a_teacher_is_hashed_as_its_run_and_final_checkpoint_not_its_path(job_id, tmp_path):
    def teacher(where, crc):
        (where / "checkpoints").mkdir(parents=True)
        (where / "checkpoints" / "final.pt.sum").write_text(f'{{"bytes": 10, "crc32": {crc}}}\n')
        return where

    first = teacher(tmp_path / "a" / "mha-sort-s0-12345678", 1)
    moved = teacher(tmp_path / "b" / "mha-sort-s0-12345678", 1)
    base = job_id(f"distill.teacher={first}")
    assert base != job_id("variant=mha")
    assert job_id(f"distill.teacher={moved}") == base
    (first / "checkpoints" / "final.pt.sum").write_text('{"bytes": 10, "crc32": 2}\n')
    assert job_id(f"distill.teacher={first}") != base


def _finished(path, crc: int):
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "final.pt.sum").write_text(f'{{"bytes": 1, "crc32": {crc}}}')
    return path


def test_init_from_is_hashed_as_the_source_runs_identity_not_its_path(job_id, tmp_path):
    """A copy of the source is the same computation; the same path holding other weights is not."""
    a = _finished(tmp_path / "a" / "mha-sort-s0-12345678", 7)
    b = _finished(tmp_path / "b" / "mha-sort-s0-12345678", 7)
    first = job_id("variant=k_eq_v", f"init_from={a}", "convert.alpha=0.5")
    assert first == job_id("variant=k_eq_v", f"init_from={b}", "convert.alpha=0.5")
    assert first != job_id("variant=k_eq_v", f"init_from={a}", "convert.alpha=0.6")
    (a / "checkpoints" / "final.pt.sum").write_text('{"bytes": 1, "crc32": 8}')
    assert first != job_id("variant=k_eq_v", f"init_from={a}", "convert.alpha=0.5")
