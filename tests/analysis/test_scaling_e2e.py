"""End to end: the ladder's three smallest rungs on a tiny corpus, two variants, then `qkvlab scaling`."""

import pytest


@pytest.mark.slow
def test_three_rungs_two_variants_then_scaling(run_cli, shakespeare, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(shakespeare.read_bytes()[:200_000])
    train = run_cli(
        "train", "-m", "experiment=scaling_ladder", "model=ladder_1,ladder_2,ladder_3", "variant=mha,k_eq_v",
        f"data.path={corpus}", "data.val_tokens=4096", "data.batch_size=8",
        "train.tokens_per_param=0.2", "train.device=cpu", "train.progress=false", "optim.warmup_steps=5",
        timeout=600,
        env_extra={"OMP_NUM_THREADS": "1"},
    )
    assert train.returncode == 0, train.stderr[-2000:]
    out = tmp_path / "report"
    result = run_cli("scaling", "outputs", "--out", str(out), "--bootstrap", "50")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Compute multiplier vs mha" in result.stdout and "| k_eq_v | 3 |" in result.stdout
    assert (out / "scaling.md").read_text().startswith("Ladder")
    for png in ("loss_vs_compute.png", "gap_vs_compute.png"):
        assert (out / png).stat().st_size > 10_000
