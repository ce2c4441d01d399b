"""`qkvlab eval` and `qkvlab generate` on real trained run directories."""

from __future__ import annotations

import json

import pytest

# fp32: eval must reproduce training's numbers exactly, whatever precision=auto would pick on the machine.
TRAIN = ("train", "model=tiny", "logger=none", "train.progress=false", "train.device=cpu", "train.precision=fp32")


@pytest.mark.slow
def test_eval_reproduces_training_and_generate_samples(run_cli, tmp_path):
    trained = run_cli(*TRAIN, "data=mqar", "train.steps=20", "train.eval_every=20", "data.val_size=128", "hydra.run.dir=run")
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())

    evaluated = run_cli("eval", "run")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    (row,) = report["results"]
    assert row["context"] == 64 and report["checkpoint_step"] == 20
    assert row["val/ppl"] == pytest.approx(summary["val/ppl"], rel=1e-5)
    assert row["val/acc"] == pytest.approx(summary["val/acc"])
    assert "val/ppl" in evaluated.stdout and "64" in evaluated.stdout

    args = ("generate", "run", "--prompt", "3 70 5 90 3", "--max-new-tokens", "6")
    cached = run_cli(*args, "--temperature", "0.8", "--top-k", "20", "--seed", "3")
    recomputed = run_cli(*args, "--temperature", "0.8", "--top-k", "20", "--seed", "3", "--no-cache")
    assert cached.returncode == 0, cached.stderr
    tokens = cached.stdout.split()
    assert len(tokens) == 11 and tokens[:5] == ["3", "70", "5", "90", "3"]
    assert cached.stdout == recomputed.stdout
    several = run_cli(*args, "--temperature", "0", "--num-samples", "2")
    assert several.returncode == 0, several.stderr
    lines = several.stdout.splitlines()
    assert lines[0] == "--- sample 1 of 2 ---" and lines[2] == "--- sample 2 of 2 ---" and len(lines) == 4
    assert lines[1] == lines[3] and lines[1].split()[:5] == ["3", "70", "5", "90", "3"]  # greedy: the same sample twice

    bad = run_cli("generate", "run", "--prompt", "3 999")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == ["qkvlab: error: --prompt: token id 999 is outside the vocabulary 0..127"]


@pytest.mark.slow
def test_generate_refuses_a_bidirectional_run_in_one_line(run_cli, tmp_path):
    assert run_cli(*TRAIN, "data=sort", "train.steps=2", "hydra.run.dir=run").returncode == 0
    out = run_cli("generate", "run", "--prompt", "1 2 3")
    assert out.returncode != 0
    (line,) = out.stderr.strip().splitlines()
    assert "bidirectional" in line and "causal" in line


def test_eval_of_a_missing_run_is_one_line(run_cli):
    out = run_cli("eval", "no/such/run")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == ["qkvlab: error: run directory no/such/run does not exist"]


@pytest.mark.slow
def test_eval_and_generate_on_a_text_run(run_cli, tmp_path, shakespeare):
    trained = run_cli(*TRAIN, "data=text", f"data.path={shakespeare}", "data.seq_len=32", "data.batch_size=8",
                      "data.val_tokens=2048", "variant=k_eq_v", "train.steps=4", "train.eval_every=4", "hydra.run.dir=run")
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    evaluated = run_cli("eval", "run", "--contexts", "32,64")
    assert evaluated.returncode == 0, evaluated.stderr
    rows = {r["context"]: r for r in json.loads((tmp_path / "run" / "eval.json").read_text())["results"]}
    assert set(rows) == {32, 64}
    assert rows[32]["val/ppl"] == pytest.approx(summary["val/ppl"], rel=1e-5)
    out = run_cli("generate", "run", "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ROMEO:") and len(out.stdout.rstrip("\n")) >= len("ROMEO:") + 1
