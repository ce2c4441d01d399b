"""scripts/bench_gpu.sh runs on a lent GPU machine only, minutes at a time: a renamed option or a
broken step would be found there, with the GPU time spent. Its DRY=1 mode runs every command on the
CPU with tiny shapes, so CI finds it here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, qkvlab_env

SCRIPT = REPO / "scripts" / "bench_gpu.sh"


def decode_script():
    spec = importlib.util.spec_from_file_location("bench_gpu_decode", REPO / "scripts" / "bench_gpu_decode.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu_decode"] = module
    spec.loader.exec_module(module)
    return module


HEADER = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'


def ncu_csv(path, kernels):
    """A log as ncu --csv --print-units base writes it: its own lines, then one row per kernel and metric."""
    rows = ["==PROF== Connected to process 4242 (/usr/bin/python3.12)", HEADER]
    for i, (name, read, ns) in enumerate(kernels):
        for metric, unit, value in (("dram__bytes_read.sum", "byte", read), ("gpu__time_duration.sum", "nsecond", ns)):
            rows.append(f'"{i}","4242","python3.12","127.0.0.1","{name}","1","7","(128, 1, 1)","(96, 12, 1)","0","9.0","Command line profiler metrics","{metric}","{unit}","{value:,}"')
    path.write_text("\n".join(rows) + "\n")


def test_ncu_report_sums_each_steps_kernels_between_spin_kernels(tmp_path, capsys):
    mod = decode_script()
    spin = "at::cuda::(anonymous namespace)::spin_kernel(long)"
    ncu_csv(tmp_path / "ncu.csv", [
        ("flash_fwd_splitkv_kernel", 100_000_000, 30_000), ("flash_fwd_splitkv_combine_kernel", 2_000_000, 2_000), (spin, 10, 1_000),
        ("split_kernel", 52_000_000, 12_000), ("reduce_kernel", 1_000_000, 1_500), (spin, 10, 1_000),
    ])
    plan = tmp_path / "plan.txt"
    plan.write_text("==PROF== Profiling\n" + "".join("PLAN " + json.dumps(p) + "\n" for p in (
        {"step": "B=1 mha", "cache_bytes": 100_000_000},
        {"step": "B=1 kernel", "cache_bytes": 50_000_000})))
    assert mod.ncu_report(tmp_path / "ncu.csv", plan) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [tuple(r[1:7]) for r in rows] == [
        ("mha", "2", "102.00", "100.00", "1.020", "32.0"), ("kernel", "2", "53.00", "50.00", "1.060", "13.5")]


def test_ncu_report_refuses_a_log_that_does_not_match_the_plan(tmp_path):
    mod = decode_script()
    ncu_csv(tmp_path / "ncu.csv", [("split_kernel", 5, 5), ("spin_kernel(long)", 1, 1)])
    plan = tmp_path / "plan.txt"
    plan.write_text("".join("PLAN " + json.dumps({"step": s, "cache_bytes": 1}) + "\n" for s in ("a", "b")))
    with pytest.raises(ValueError, match="profiled 1 steps"):
        mod.ncu_report(tmp_path / "ncu.csv", plan)
    (tmp_path / "empty.csv").write_text("==PROF== nothing profiled\n")
    with pytest.raises(ValueError, match="no ncu CSV table"):
        mod.ncu_report(tmp_path / "empty.csv", plan)


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
