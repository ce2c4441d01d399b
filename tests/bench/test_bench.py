from __future__ import annotations

import json

import pytest

from qkvlab.bench.peaks import accelerator_peak
from qkvlab.errors import ConfigError
from qkvlab.model.kernels import cpu_decode
from qkvlab.model.inference_linear import C, Paths, candidates, describe
from qkvlab.train.device import compute_dtype

VARIANT_FIELDS = {
    "variant", "sharing", "n_kv_heads", "params/total", "params/attention", "params/matmul", "tokens_per_step",
    "train/first_step_s", "train/step_s", "train/tokens_per_s", "train/tokens_per_s_per_device", "train/flops_per_token", "train/mfu",
    "train/peak_memory_bytes", "loop/step_s", "loop/tokens_per_s", "loop/overhead",
    "kv_cache/bytes_per_token", "kv_cache/bytes_per_token_closed_form", "kv_cache/ratio_vs_mha", "decode/path",
    "inference", "noise",
}
TOP_FIELDS = {
    "created", "device", "device_name", "threads", "cpu_count", "torch", "precision", "compile", "peak_flops",
    "peak_flops_source", "model", "shape", "data", "seq_len", "batch_size", "overrides", "timing", "variants",
    "decode_kernel", "inference_linears", "world_size", "parallel",
}


@pytest.mark.slow
def test_bench_on_tiny_writes_every_field(run_cli, tmp_path):
    out = run_cli(
        "bench", "--variants", "mha,k_eq_v_mqa", "--steps", "2", "--repeats", "1", "--warmup", "0",
        "--decode-tokens", "2", "--contexts", "16,32", "--out", "bench.json", "--train-seq-len", "32",
        "--blocks", "default,nanogpt", "train.device=cpu", "train.progress=false", "data.batch_size=8", "data.val_size=8",
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report) == TOP_FIELDS
    # auto picks bf16 on CPUs with AMX, where the peak is the better of the bf16 and fp32 matmuls.
    of_dtypes = ", best of bf16 and fp32" if report["precision"] == "bf16" else ""
    assert report["peak_flops"] > 0
    assert report["peak_flops_source"] == f"measured matmul{of_dtypes}, best of before and after the timings"
    assert (report["seq_len"], report["batch_size"]) == (32, 8)  # --train-seq-len, and the user's batch kept
    assert [r["variant"] for r in report["variants"]] == ["mha", "k_eq_v_mqa", "mha/nanogpt", "k_eq_v_mqa/nanogpt"]
    mha, mqa, nano_mha, _ = report["variants"]
    assert nano_mha["params/total"] != mha["params/total"]  # another block: GELU MLP, biases, a position table
    # Every block in one C call where the Linears take the C loop (the probe's pick), else the kernel alone, over K and V.
    kernel = ("step:cpu" if report["inference_linears"].startswith("c") else "kernel:cpu") if cpu_decode.available() else None
    assert mha["decode/path"] == (kernel or "sdpa")
    # The probe's pick is timed, so a second probe here could differ: the report must name paths this
    # machine can take for the bench's dtype (decode rows through any candidate, prefill never the C loop).
    can = candidates(compute_dtype(report["precision"]))
    assert report["inference_linears"] in {describe(Paths(r, p)) for r in can for p in can if p != C}
    assert f"Linears: {report['inference_linears']}" in out.stdout
    assert mqa["decode/path"] == (kernel or "pytorch")
    for c in ("16", "32"):
        # Bytes per decoded token: the same weights but an eighth of the cache; GB/s follows from the timing.
        assert mqa["inference"][c]["decode_bytes_per_token"] < mha["inference"][c]["decode_bytes_per_token"]
    assert mha["inference"]["32"]["decode_bytes_per_token"] > mha["inference"]["16"]["decode_bytes_per_token"]
    for row in report["variants"]:
        assert set(row) == VARIANT_FIELDS
        assert all(row[k] is not None for k in VARIANT_FIELDS), row
        assert set(row["noise"]) == {"step ms", "loop/overhead", "prefill@16", "prefill@32", "decode@16", "decode@32"}
        assert all(v is None for v in row["noise"].values())  # one repeat: no estimate
        assert set(row["inference"]) == {"16", "32"}
        assert all(v > 0 for speeds in row["inference"].values() for v in speeds.values())
        assert row["kv_cache/bytes_per_token"] == row["kv_cache/bytes_per_token_closed_form"]
        assert 0 < row["train/mfu"] < 1
    assert mha["kv_cache/ratio_vs_mha"] == 1.0
    assert mqa["kv_cache/ratio_vs_mha"] == 1 / (2 * 4)
    assert mqa["train/flops_per_token"] < mha["train/flops_per_token"]
    assert "k_eq_v_mqa" in out.stdout and "decode@32" in out.stdout and "GB/s@32" in out.stdout
    assert "qkvlab: warning: --repeats 1 gives no noise estimate" in out.stderr


def test_bench_rejects_variant_override_in_one_line(run_cli):
    out = run_cli("bench", "variant=k_eq_v")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "qkvlab: error: pick variants with --variants mha,k_eq_v,... rather than variant=..."
    ]


def test_accelerator_peaks_match_the_most_specific_name():
    assert accelerator_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert accelerator_peak("NVIDIA H100 PCIe", "bf16") == 756e12
    assert accelerator_peak("NVIDIA A10G", "fp32") == 35e12
    assert accelerator_peak("Some Future GPU", "bf16") is None


def test_overrides_may_come_before_and_after_options():
    from qkvlab.bench.command import parse_args

    ns = parse_args(["model=small", "--variants", "mha,k_eq_v", "--no-loop", "train.compile=true", "--steps", "3"])
    assert ns.overrides == ["model=small", "train.compile=true"]
    assert ns.variants == "mha,k_eq_v" and ns.no_loop and ns.steps == 3


def _row(variant, step_s, overhead, noise, decode=100.0, prefill=1000.0):
    return {"variant": variant, "train/step_s": step_s, "loop/overhead": overhead,
            "inference": {"64": {"prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode}},
            "noise": {"step ms": noise, "loop/overhead": noise, "prefill@64": noise, "decode@64": noise}}


def test_figures_within_their_own_noise_are_warned_about():
    from qkvlab.bench.noise import noise_warnings, spread

    assert spread([1.0]) is None and spread([1.0, 2.0, 4.0]) == pytest.approx(1.5)
    report = {"timing": {"repeats": 3}, "variants": [
        _row("mha", 0.100, 2.40, noise=3.1),  # loop +240% from blocks that vary by 310%: noise
        _row("k_eq_v", 0.050, 0.01, noise=0.02, decode=101.0),
    ]}
    lines = noise_warnings(report)
    assert lines[0] == ("loop +% is within its own noise for mha (+240.0%, the blocks vary by 310.0%), "
                        "k_eq_v (+1.0%, the blocks vary by 2.0%); raise --steps or --repeats")
    # against mha's noisy blocks every difference of k_eq_v is noise, the halved step time included
    assert lines[1].startswith("these differences from mha are within their own noise: k_eq_v step ms -50.0% (blocks vary by 310.0%)")
    quiet = {"timing": {"repeats": 5}, "variants": [_row("mha", 0.100, 0.10, 0.01), _row("k_eq_v", 0.050, 0.10, 0.01, decode=150.0, prefill=900.0)]}
    assert noise_warnings(quiet) == []
    assert noise_warnings({"timing": {"repeats": 1}, "variants": quiet["variants"]})[0].startswith("--repeats 1 gives no noise estimate")


def test_training_shape_defaults_to_the_context_and_keeps_the_presets_tokens_per_step():
    from qkvlab.bench.command import train_shape
    from qkvlab.checks import compose_config

    cfg = compose_config(["data=mqar", "model=small"])  # context 512; mqar: batch 64 x 64 tokens
    assert train_shape(cfg, None, []) == (512, 8)
    assert train_shape(cfg, 128, []) == (128, 32)
    assert train_shape(cfg, 128, ["data.batch_size=64"]) == (128, 64)
    with pytest.raises(ConfigError, match="--train-seq-len=1024 is above model.context=512; give at most 512"):
        train_shape(cfg, 1024, [])


def test_an_unknown_block_is_one_line():
    from qkvlab.bench.command import parse_args

    with pytest.raises(ConfigError, match="--blocks: 'gpt3' is not a block; choose from default, nanogpt"):
        parse_args(["--blocks", "default,gpt3"])


@pytest.mark.slow
def test_bench_under_torchrun_reports_the_jobs_and_each_devices_tokens_per_second(torchrun, tmp_path):
    out = torchrun(["-m", "qkvlab", "bench", "--variants", "mha", "--steps", "1", "--repeats", "1", "--warmup", "0",
                    "--decode-tokens", "2", "--contexts", "16", "--out", "bench.json", "train.device=cpu",
                    "train.progress=false", "data.batch_size=8", "data.val_size=8"])
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (report["world_size"], report["parallel"]) == (2, "ddp")
    (row,) = report["variants"]
    assert row["train/tokens_per_s_per_device"] == pytest.approx(row["train/tokens_per_s"] / 2)
    assert row["loop/overhead"] is None  # the full loop is one process's: not timed under torchrun
    assert out.stdout.count("tok/s/dev") == 1  # rank 0 alone prints the table


def test_a_cpu_bf16_peak_is_never_below_the_fp32_one(monkeypatch):
    """Emulated bf16 matmuls measured slower than a bf16 step's own, so MFU read 400%; the peak is the better of the two."""
    import torch

    from qkvlab.bench import peaks

    monkeypatch.setattr(peaks, "measured_matmul_peak", lambda device, dtype, **_: 0.65e9 if dtype == torch.bfloat16 else 180e9)
    peak, source, _ = peaks.device_peak(torch.device("cpu"), "bf16")
    assert (peak, source) == (180e9, "measured matmul, best of bf16 and fp32")
    assert peaks.device_peak(torch.device("cpu"), "fp32")[:2] == (180e9, "measured matmul")


def test_mfu_is_measured_against_the_best_matmul_peak_of_the_run(monkeypatch, tmp_path):
    """A CPU's matmul peak taken in a busy moment read half the machine's rate and MFU read 122%: the peak is
    measured before and after the timings, and every MFU is against the better of the two."""
    from qkvlab.bench import peaks
    from qkvlab.bench.command import BASE_OVERRIDES, bench
    from qkvlab.bench.run import BenchOptions
    from qkvlab.checks import compose_config

    rates = iter([1e6, 1e15])
    monkeypatch.setattr(peaks, "measured_matmul_peak", lambda *a, **k: next(rates))
    monkeypatch.chdir(tmp_path)
    cfg = compose_config([*BASE_OVERRIDES, "variant=mha", "train.device=cpu", "train.progress=false", "train.precision=fp32",
                          "data.batch_size=4", "data.seq_len=32", "data.val_size=4"])
    opts = BenchOptions(contexts=(32,), steps=1, repeats=1, warmup=0, decode_tokens=2, loop=False)
    report = bench([cfg], [], opts)
    assert report["peak_flops"] == 1e15
    assert report["peak_flops_source"] == "measured matmul, best of before and after the timings"
    (row,) = report["variants"]
    assert row["train/mfu"] == pytest.approx(row["train/flops_per_token"] * row["train/tokens_per_s"] / 1e15)
