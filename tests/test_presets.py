"""Experiment presets: each composes, validates, names itself and says what it measures."""

from __future__ import annotations

import importlib.util

import pytest
from hydra import compose, initialize_config_dir

from qkvlab.cli import CONF_DIR, expand_sweep, preset_sweep_params
from qkvlab.checks import checked
from qkvlab.config import register_configs

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
NEEDS_PLUGIN = {"lr_optuna": "hydra_plugins.hydra_optuna_sweeper"}
# Presets on local text take the corpus from the command line (data.path=...).
NEEDS_CORPUS = {"scaling_ladder", "overtraining", "context_sweep"}
# Presets that start from a trained run take it from the command line (init_from=...; read at start-up, not here).
NEEDS_SOURCE = {"kv_conversion"}


def test_the_issue_presets_exist():
    assert {"ci_smoke", "variants_synthetic", "paper_300m", "paper_1b", "lr_sweep"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_says_what_it_measures(name, tmp_path):
    plugin = NEEDS_PLUGIN.get(name)
    if plugin and importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{plugin} is not installed (pip install 'qkvlab[optuna]')")
    text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert text[0] == "# @package _global_"
    assert text[1].startswith(f"# {name}:"), "the second line states what the preset measures"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a local corpus for presets that train on text\n")
    extra = [f"data.path={corpus}"] if name in NEEDS_CORPUS else []
    extra += [f"init_from={tmp_path / 'source_run'}"] if name in NEEDS_SOURCE else []
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        typed = checked(compose("config", overrides=[f"experiment={name}", *extra]))
        params = preset_sweep_params("config", [f"experiment={name}", *extra], [])
        # Seeds cannot make a config invalid; every other combination is checked.
        jobs = {tuple(o for o in job if not o.startswith("seed=")) for job in expand_sweep([f"experiment={name}", *extra], params)}
        for job in sorted(jobs):
            checked(compose("config", overrides=list(job)))
    assert typed.name == name


def test_ci_smoke_sweeps_every_variant_over_two_seeds():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        params = preset_sweep_params("config", ["experiment=ci_smoke"], [])
    jobs = expand_sweep(["experiment=ci_smoke"], params)
    variants = {p.stem for p in (CONF_DIR / "variant").glob("*.yaml")}
    assert len(jobs) == 2 * len(variants)
    assert {o.split("=")[1] for job in jobs for o in job if o.startswith("variant=")} == variants


def test_command_line_replaces_a_preset_axis():
    jobs = expand_sweep(["experiment=ci_smoke", "seed=5"], ["variant=mha,k_eq_v", "seed=0,1"])
    assert jobs == [["variant=mha", "seed=5", "experiment=ci_smoke"], ["variant=k_eq_v", "seed=5", "experiment=ci_smoke"]]


def test_a_missing_launcher_plugin_is_one_line_naming_the_extra(capsys):
    from qkvlab.cli import precheck

    with pytest.raises(SystemExit):
        precheck(["experiment=ci_smoke", "hydra/launcher=nope"], True, "config", None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hydra/launcher=nope" in err and "pip install 'qkvlab[sweep]'" in err


def test_a_submitit_job_of_several_tasks_checks_its_batch_against_the_tasks_at_start_up(tmp_path, monkeypatch, capsys):
    """Each task of a submitit job is one rank, so the global batch must split over nodes x tasks_per_node
    before anything is sent to the cluster, not in every task of every job."""
    from qkvlab.cli import precheck

    register_configs()
    monkeypatch.chdir(tmp_path)
    launcher = ["hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=2"]
    with pytest.raises(SystemExit) as exc:
        precheck(["data.batch_size=6", *launcher], True, "config", None)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qkvlab: error: data.batch_size=6 is the global batch, split over the 4 processes"), err
    precheck(["data.batch_size=8", *launcher], True, "config", None)
