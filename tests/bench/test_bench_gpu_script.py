"""scripts/bench_gpu.sh runs on a lent GPU machine only, minutes at a time: a renamed option or a
broken step would be found there, with the GPU time spent. Its DRY=1 mode runs every command on the
CPU with tiny shapes, so CI finds it here."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from tests.conftest import REPO, qkvlab_env

SCRIPT = REPO / "scripts" / "bench_gpu.sh"


def test_unknown_part_is_refused_in_one_line(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "outputs"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "bench_gpu.sh: unknown part 'outputs'; choose decode, train or all"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the decode kernel's dry run needs Triton (the test extra brings it)")
def test_dry_run_runs_every_step_and_writes_its_results(tmp_path):
    out = tmp_path / "gpu"
    env = qkvlab_env(tmp_path) | {"DRY": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(SCRIPT), "all", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().splitlines()[-1].endswith(" done")
    names = {p.name for p in out.iterdir()}
    assert names == {"decode.txt", "decode_tune.txt", "decode_tiny_auto.json", "decode_tiny_off.json", "gpt2_compile.json",
                     "gpt2_eager.json", "small_fp32.json", "small_bf16.json", "torchrun.json", "train_loss.txt"}
    assert "checked in" in (out / "decode.txt").read_text()
    for kernel in ("auto", "off"):
        variants = json.loads((out / f"decode_tiny_{kernel}.json").read_text())["variants"]
        assert [v["variant"] for v in variants] == ["mha", "k_eq_v"]
        assert all(v["inference"]["256"]["decode_tokens_per_s"] > 0 for v in variants)
    losses = (out / "train_loss.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in losses] == ["mqar fp32", "mqar bf16"]
