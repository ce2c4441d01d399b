"""Timing and memory that hold up on a shared, noisy machine: warm-up first,
then the median of repeats, with the device synchronised around each one."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved_medians(paths: dict[str, Callable[[], object]], rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each CPU path, timed round-robin (ABAB...) so the machine's drift falls on
    all of them alike: what the scripts/bench_*.py microbenchmarks compare."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(warmup + rounds):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _proc_status_bytes(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) * 1024 if match else 0


def peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[int | None, str]:
    """Peak bytes held while `fn` runs: the CUDA allocator's peak, or on CPU the
    process's peak resident set (VmHWM, reset first through /proc/self/clear_refs)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None, "unavailable (no /proc/self/clear_refs)"
    fn()
    return _proc_status_bytes("VmHWM"), "process peak RSS (VmHWM)"
