"""The closing summary says which way the KV cache differs from mha's."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkvlab.train.run import print_summary


@pytest.mark.parametrize("reduction,words", [(0.5, "50.0% less than mha"), (0.0, "0.0% less than mha"), (-1.0, "100.0% more than mha")])
def test_kv_cache_change_reads_the_right_way_round(capsys, reduction, words):
    s = {
        "variant": "v", "data": "mqar", "model": "tiny", "seed": 0, "step": 1, "tokens": 10, "wall_time_s": 1.0,
        "val/loss": 1.0, "val/ppl": 2.7, "val/acc": 0.5, "params/total": 10, "params/attention": 4,
        "kv_cache/bytes_per_token": 2048, "precision": "fp32", "kv_cache/reduction_vs_mha": reduction,
        "throughput/tokens_per_s": 100.0,
    }
    print_summary(s, Path("run"))
    assert f"KV cache 2,048 B/token (fp32, {words})" in capsys.readouterr().out


# A distilled student's summary, as train writes it (a teacher that ran also logs train/kl).
STUDENT = {
    "variant": "k_eq_v", "data": "sort", "model": "tiny", "seed": 0, "step": 1, "tokens": 10, "wall_time_s": 1.0,
    "val/loss": 1.0, "val/ppl": 2.7, "val/acc": 0.5, "params/total": 10, "params/attention": 4,
    "kv_cache/bytes_per_token": 2048, "precision": "fp32", "kv_cache/reduction_vs_mha": 0.5,
    "throughput/tokens_per_s": 100.0, "distill/teacher": "/runs/mha-sort-s0-1a2b3c4d",
    "distill/teacher_run_id": "ae1qazhq", "distill/teacher_crc32": 940446246, "train/ce": 2.25,
}


def test_a_distilled_run_names_its_teacher(capsys):
    s = {**STUDENT, "train/kl": 0.0125}
    print_summary(s, Path("run"))
    assert ("  distilled from /runs/mha-sort-s0-1a2b3c4d (run id ae1qazhq, final checkpoint CRC32 380e1226)"
            "   train ce 2.2500   train kl 0.0125\n") in capsys.readouterr().out


def test_a_teacher_that_never_ran_is_not_called_distillation(capsys):
    s = dict(STUDENT)
    print_summary(s, Path("run"))
    out = capsys.readouterr().out
    assert "distilled from" not in out
    assert "  teacher not run (distill.alpha=1: plain training): /runs/mha-sort-s0-1a2b3c4d" in out
