"""Every command's bad input is one line on stderr naming what to change, and exit code 2."""

from __future__ import annotations

import pytest
import torch

from qkvlab.cli import main

LONG = "x" * 5000


def error_of(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("qkvlab: error: "), err
    return err.removeprefix("qkvlab: error: ")


def test_cfg_job_with_a_bad_override_is_one_line(capsys):
    assert error_of(capsys, "train", "--cfg", "job", "optim.lr=foo").startswith("optim.lr: Value 'foo'")


def test_help_still_needs_no_valid_overrides(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code in (0, None)
    assert "Config groups" in capsys.readouterr().out


@pytest.mark.parametrize("override,quoted", [
    ("name=ablation–1", "name='ablation–1'"),
    ("logger.tags=[café,b]", "logger.tags=['café','b']"),
])
def test_unquoted_non_ascii_value_says_how_to_quote_it(override, quoted, capsys):
    err = error_of(capsys, "train", override)
    assert err.startswith(f"{override}: the unquoted value holds the non-ASCII character") and f"quote it: {quoted}" in err


@pytest.mark.parametrize("args,culprit,fix", [
    (["variant.name=" + LONG], "variant.name=xxxx", "hydra.run.dir=PATH"),
    (["-m", f"variant.name={LONG},mha"], "variant.name=xxxx", "hydra.sweep.subdir=NAME"),
    (["hydra.run.dir=out/" + LONG], "hydra.run.dir=out/xxxx", "hydra.run.dir=PATH"),
    (["hydra.job.name=" + LONG], "hydra.job.name=xxxx", "give hydra.job.name a shorter value"),
])
def test_an_override_too_long_for_a_directory_name_is_one_short_line(args, culprit, fix, capsys):
    err = error_of(capsys, "train", *args)
    assert err.startswith(culprit) and "(5,0" in err and "over the 255 a file system allows" in err and fix in err
    assert len(err) < 400


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_fails_at_start_up(capsys):
    err = error_of(capsys, "train", "train.device=cuda")
    assert err.startswith("train.device=cuda but torch.cuda.is_available() is False (this torch is ")
    assert err.endswith("use train.device=auto or cpu")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_mps_fails_at_start_up(capsys):
    assert error_of(capsys, "train", "-m", "train.device=cpu,mps").startswith("train.device=mps but torch.backends.mps")


@pytest.mark.parametrize("args,message", [
    (["eval", "no/such/run"], "run directory no/such/run does not exist"),
    (["eval", "run", "--contexts", "0"], "qkvlab eval: argument --contexts: context length 0 is below 2"),
    (["generate", "run", "--prompt", "1", "--temperature", "nan"], "--temperature=nan must be a finite number >= 0"),
    (["generate", "run"], "qkvlab generate: the following arguments are required: --prompt"),
    (["analyze", "no/such/run"], "run directory no/such/run does not exist"),
    (["analyze", "run", "--batch", "0"], "--batch=0 must be at least 1"),
    (["analyze", "run", "--max-len", "1"], "--max-len=1 must be at least 2 (a symmetry needs a pair of positions)"),
    (["bench", "--contexts", "0"], "qkvlab bench: argument --contexts: context length 0 is below 2"),
    (["bench", "--contexts", "16,4096"], "--contexts: 4096 is above model.context=128; give lengths up to 128"),
    (["bench", "--variants", "nope"], "variant=nope is not a known option"),
    (["compare", "--bogus", "."], "qkvlab compare: unrecognized arguments: --bogus"),
    (["scaling"], "qkvlab scaling: the following arguments are required: PATH"),
])
def test_commands_refuse_bad_input_in_one_line_with_exit_2(args, message, capsys):
    assert error_of(capsys, *args).startswith(message)


@pytest.mark.parametrize("command", [["eval"], ["generate", "--prompt", "1"], ["analyze"]])
def test_a_run_with_an_unreadable_summary_is_one_line_naming_it(command, tmp_path, capsys):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / "summary.json").write_text("")
    err = error_of(capsys, command[0], str(run), *command[1:])
    assert err.startswith(f"{run / 'summary.json'} is unreadable (empty)")
