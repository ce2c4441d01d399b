"""The FLOP/s an MFU figure is measured against.

GPUs: dense tensor-core peaks from the vendors' datasheets (no sparsity),
bf16 and fp32-via-TF32, matched on the device name. CPUs have no datasheet
figure worth trusting, so their peak is measured: the best large matmul rate
in the run's precision.
"""

from __future__ import annotations

import time

import torch

# name fragment -> (bf16 FLOP/s, fp32/TF32 FLOP/s); longest fragment wins.
ACCELERATOR_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 494e12),
    "H100 PCIe": (756e12, 378e12),
    "H100": (989e12, 494e12),
    "GH200": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "A10G": (70e12, 35e12),
    "A10": (125e12, 62.5e12),
    "L40S": (362e12, 183e12),
    "L4": (121e12, 60e12),
    "RTX 4090": (165e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
}


def accelerator_peak(name: str, precision: str) -> float | None:
    for fragment in sorted(ACCELERATOR_PEAKS, key=len, reverse=True):
        if fragment in name:
            bf16, fp32 = ACCELERATOR_PEAKS[fragment]
            return bf16 if precision == "bf16" else fp32
    return None


def measured_matmul_peak(
    device: torch.device, dtype: torch.dtype, n: int = 1024, repeats: int = 10, min_seconds: float = 0.5
) -> float:
    """Best FLOP/s of an n x n matmul over at least `repeats` calls and `min_seconds`; the best, not the
    median, since a peak is what the hardware can do when nothing else runs, and a window long enough
    that a brief stall of a shared machine does not become the peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, i, start = float("inf"), 0, time.perf_counter()
    while i < repeats + 2 or (time.perf_counter() - start < min_seconds and i < 100 * repeats):
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            best = min(best, time.perf_counter() - t)
        i += 1
    return 2 * n**3 / best


def device_peak(device: torch.device, precision: str) -> tuple[float, str, str]:
    """(FLOP/s, where the figure comes from, device name)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = accelerator_peak(name, precision)
        if peak is not None:
            return peak, "datasheet", name
        return measured_matmul_peak(device, dtype, n=4096), "measured matmul", name
    name = cpu_name()
    peak = measured_matmul_peak(device, dtype)
    if dtype != torch.float32:
        # Emulated bf16 (no AMX or AVX512-BF16) is so slow on a square matmul that the small, differently
        # dispatched matmuls of a bf16 step beat it, and MFU read above 100%; the faster precision bounds both.
        return max(peak, measured_matmul_peak(device, torch.float32)), "measured matmul, best of bf16 and fp32", name
    return peak, "measured matmul", name


def best_peak(before: tuple[float, str, str], after: tuple[float, str, str]) -> tuple[float, str, str]:
    """The better of two peaks measured around a run's timings: a busy moment at either end only ever
    lowers a measured rate. A datasheet figure is the same both times and stays as it is."""
    if before[1] == "datasheet":
        return before
    return max(before[0], after[0]), f"{before[1]}, best of before and after the timings", before[2]


def cpu_name() -> str:
    import platform

    from qkvlab.train.device import cpuinfo

    return cpuinfo("model name") or platform.processor() or "cpu"
