"""Every shipped config composes and validates; bad inputs fail at start-up with one line."""

import subprocess
import sys

import pytest

from qkvlab.cli import CONF_DIR, main
from qkvlab.config import FLOAT_RANGES, float_keys

from tests.conftest import qkvlab_env
from tests.helpers import make_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("variant", options("variant"))
def test_every_variant_composes(variant):
    assert make_config(f"variant={variant}").variant.name == variant


@pytest.mark.parametrize("data", options("data"))
def test_every_data_preset_composes(data, tmp_path):
    local = tmp_path / "corpus.txt"
    local.write_text("data=text needs a corpus to validate\n")
    cfg = make_config(f"data={data}", *([f"data.path={local}"] if data == "text" else []))
    assert cfg.data.name == data


@pytest.mark.parametrize("model", options("model"))
def test_every_model_preset_composes(model):
    cfg = make_config(f"model={model}", "data=mqar")
    assert cfg.model.name == model


BAD = [
    (["variant=foo"], ["variant=foo", "choose one of", "k_eq_v", "q_eq_k_eq_v"]),
    (["model.foo=1"], ["model.foo", "known keys in model", "d_model"]),
    (["model.n_heads=5"], ["model.n_heads=5", "d_model=64"]),
    (["variant=q_eq_k", "variant.kv_group_size=2"], ["q_eq_k", "n_kv_heads", "kv_group_size=1"]),
    (["variant=q_eq_k_eq_v", "variant.n_kv_heads=1"], ["q_eq_k_eq_v", "n_kv_heads"]),
    (["data.seq_len=500"], ["data.seq_len=500", "model.context=128"]),
    (["optim.lr=-0.1"], ["optim.lr", "in (0, 1e+30]"]),
    (["optim.lr=3e38"], ["optim.lr=3e+38 is out of range", "in (0, 1e+30]"]),
    (["train.device=tpu"], ["train.device", "auto, cpu, cuda, mps"]),
    (["model.n_layers=abc"], ["model.n_layers", "abc"]),
    (["-m", "variant=mha,nope"], ["variant=nope", "choose one of", "sweep job 1"]),
    (["experiment=my_study"], ["experiment=my_study is not a known option", "ci_smoke", "use name=my_study"]),
    (["--config-dir", "no/such/dir", "--cfg", "job"], ["--config-dir no/such/dir is not a directory", "experiment/my_study.yaml"]),
    (["name=a/b"], ["name='a/b' cannot name a folder under outputs/", "name=my_study"]),
    (["distill.alpha=0.3"], ["distill.alpha=0.3 is read only with a teacher", "distill.teacher=RUN_DIR"]),
    (["distill.teacher=no/such/run"], ["distill.teacher no/such/run does not exist"]),
    (["-m", "seed=0,1", "distill.teacher=."], ["has no .hydra/config.yaml", "(sweep job 0"]),
    (["train.steps=-1"], ["train.steps=-1 is out of range", ">= 0"]),
    (["init_from=x", "convert.alpha=1.5"], ["convert.alpha='1.5' is not valid", "[0, 1]", "fit, random"]),
    (["convert.alpha=0.5"], ["convert.alpha=0.5", "init_from, which is not set", "add init_from=RUN_DIR"]),
    (["init_from=no/such/run"], ["init_from", "no/such/run does not exist"]),
    (["-m", "experiment=kv_conversion"], ["init_from, which is not set", "sweep job 0"]),
]


@pytest.mark.parametrize("args,needles", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_naming_the_problem(args, needles, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("qkvlab: error: ")
    for needle in needles:
        assert needle in err


@pytest.mark.slow
def test_traceback_only_on_request(tmp_path):
    cmd = [sys.executable, "-m", "qkvlab.cli", "train", "variant=foo"]
    quiet = subprocess.run(cmd, cwd=tmp_path, env=qkvlab_env(tmp_path), capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1
    loud = subprocess.run(cmd, cwd=tmp_path, env={**qkvlab_env(tmp_path), "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True)
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_unknown_command(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_the_schema_walk_finds_every_float_key_and_each_has_a_range():
    keys = float_keys()
    assert {"model.rope_theta", "optim.lr", "optim.grad_clip", "train.tokens_per_param"} <= set(keys)
    assert set(keys) == set(FLOAT_RANGES), "give every float key of the schema a range in config.FLOAT_RANGES"


def one_error_line(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("qkvlab: error: "), err
    return err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", float_keys())
def test_every_float_key_refuses_a_non_finite_value(key, value, capsys):
    err = one_error_line([f"{key}={value}"], capsys)
    assert f"{key}={value}" in err and "is not a finite number; give a value" in err


OUT_OF_RANGE = [
    ("model.rope_theta=0", "model.rope_theta=0.0 is out of range; give a value > 0"),
    ("model.norm_eps=0", "model.norm_eps=0.0 is out of range; give a value > 0"),
    ("model.dropout=1", "model.dropout=1.0 is out of range; give a value in [0, 1)"),
    ("optim.eps=-1e-8", "optim.eps=-1e-08 is out of range; give a value > 0"),
    ("optim.grad_clip=-1", "optim.grad_clip=-1.0 is out of range; give a value >= 0"),
    ("optim.beta2=1", "optim.beta2=1.0 is out of range; give a value in [0, 1)"),
    ("train.tokens_per_param=0", "train.tokens_per_param=0.0 is out of range; give a value > 0"),
    ("distill.alpha=1.5", "distill.alpha=1.5 is out of range; give a value in [0, 1]"),
    ("distill.temperature=0", "distill.temperature=0.0 is out of range; give a value in (0, 1000]"),
]


@pytest.mark.parametrize("override,message", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_out_of_range_float_is_one_line_with_the_range(override, message, capsys):
    assert one_error_line([override], capsys) == f"qkvlab: error: {message}"
