"""Every shipped config composes and validates; bad inputs fail at start-up with one line."""

import subprocess
import sys

import pytest

from qkvlab.cli import CONF_DIR, main

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
    (["optim.lr=-0.1"], ["optim.lr", "> 0"]),
    (["train.device=tpu"], ["train.device", "auto, cpu, cuda, mps"]),
    (["model.n_layers=abc"], ["model.n_layers", "abc"]),
    (["-m", "variant=mha,nope"], ["variant=nope", "choose one of", "sweep job 1"]),
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
