"""`qkvlab analyze` end to end on a real trained run (every variant's analysis runs in process in
tests/train/test_loop.py::test_every_variant_resumed_mid_window_ends_bit_identical)."""

from __future__ import annotations

import pytest

from qkvlab.cli import main

from tests.analysis.analyze_checks import assert_analysis

TRAIN = ("train", "model=tiny", "logger=none", "train.progress=false", "train.device=cpu", "data.batch_size=8",
         "data.seq_len=16", "data.val_size=64", "train.steps=10", "train.eval_every=10")


@pytest.mark.slow
def test_analyze_writes_maps_json_and_plot_and_prints_a_table(run_cli, tmp_path, monkeypatch, capsys):
    trained = run_cli(*TRAIN, "variant=q_eq_k", "hydra.run.dir=run", env_extra={"OMP_NUM_THREADS": "1"})
    assert trained.returncode == 0, trained.stderr

    out = run_cli("analyze", "run", "--batch", "3", "--max-len", "10", env_extra={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    report = assert_analysis(tmp_path / "run" / "analysis", n_layers=2)
    assert report["sample"]["rows"] == [0, 1, 2] and report["sample"]["tokens"] == 10
    assert report["checkpoint_step"] == 10 and report["variant"] == "q_eq_k"
    assert all(row["symmetry_normalised"] < 1e-5 for row in report["layers"])  # Q=K with RoPE: symmetric scores
    lines = out.stdout.splitlines()
    assert lines[0].startswith("qkvlab analyze: q_eq_k on sort (model tiny, step 10, ")
    assert lines[0].endswith("), 3 validation sequences of 10 tokens")
    assert lines[1].split() == ["layer", "symmetry", "sym/|S|", "cos_qk", "cos_kv", "cos_qv", "erank_q", "erank_k", "erank_v"]
    assert [line.split()[0] for line in lines[2:4]] == ["0", "1"]
    assert lines[4] == "  wrote run/analysis/analysis.json, run/analysis/layers.png and 2 maps in run/analysis/maps"

    # The rest in process: the run is there, and a subprocess costs a torch import each.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QKVLAB_CACHE", str(tmp_path / "cache"))
    main(["analyze", "run", "--out", "mine", "--batch", "1"])
    assert assert_analysis(tmp_path / "mine", n_layers=2)["sample"]["tokens"] == 16
    capsys.readouterr()
    for args, message in (
        (("--batch", "9"), "--batch=9 is more than the 8 sequences of a validation batch; lower --batch or raise "
                          "data.batch_size (it is 8)"),
        (("--max-len", "17"), "--max-len=17 is longer than the run's validation sequences (16 tokens); give at most 16"),
        (("--out", "run/summary.json"), "--out run/summary.json: run/summary.json is a file, not a directory; "
                                       "choose another folder"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["analyze", "run", *args])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"qkvlab: error: {message}"]
