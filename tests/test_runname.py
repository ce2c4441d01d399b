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


def test_presets_put_runs_under_their_experiment(tmp_path):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=ci_smoke", "variant=gqa"], return_hydra_config=True)
    import qkvlab.runname  # noqa: F401  the resolver

    assert str(cfg.hydra.run.dir).startswith("outputs/ci_smoke/gqa-sort-s0-")
    assert str(cfg.hydra.sweep.dir) == "outputs/ci_smoke"
    assert cfg.hydra.run.dir.endswith(cfg.hydra.sweep.subdir)  # a single run and a sweep job share the directory
