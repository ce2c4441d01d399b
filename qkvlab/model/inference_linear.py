"""Inference Linears on a CPU through whichever path is fastest on this machine: PyTorch's (MKL for
fp32), oneDNN's (the matmul library bundled with PyTorch), or qkvlab's C loop for a few rows
(kernels/cpu_linear.py).

Decoding reads every weight once per token, so these products are paid by every variant alike and
dilute what a smaller KV cache saves. No library wins everywhere. On a 2-core AVX2 EPYC, MKL read
`model=small`'s fp32 weights at 11-13 GB/s for one row, oneDNN at 15-18 and the C loop at 20-27.5;
on an earlier AMD EPYC a 2048-row prefill product ran at 87-154 GFLOP/s with MKL against 204-207 with
oneDNN (`scripts/bench_linear.py`); on an Intel Xeon MKL was the faster (26 GB/s, oneDNN 19.5). So
`fastest_paths` times the candidates once per process, dtype and thread count on one-row products
over weights past a core's L2, interleaved, and a path other than PyTorch's is taken only where it
wins by 5%. The one-row winner serves products of up to cpu_linear.MAX_ROWS rows (decoding); longer
ones (prefill) take oneDNN where oneDNN beat MKL, else PyTorch. All compute F.linear's products up
to summation order (bf16 outputs rounded once from fp32 sums, as PyTorch's bf16 products do).

oneDNN's entry point, `torch.ops.mkldnn._linear_pointwise`, is the one torch.compile's CPU backend
uses for frozen Linears; it is not public API, so `onednn_available()` checks once that it exists
and agrees with `F.linear`. Inference only: a forward that needs gradients takes `F.linear`.
QKVLAB_DECODE_KERNEL=off (kv_decode.py) turns all of this off with the decode kernels, for
plain-PyTorch comparisons.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model import kv_decode
from qkvlab.model.kernels import cpu_linear

TORCH, ONEDNN, C = "torch", "onednn", "c"


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


@functools.lru_cache(maxsize=None)
def onednn_available() -> bool:
    """oneDNN is built in, the op exists, and it computes F.linear's products (checked once per process)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((3, 1, 48), (40, 48), (40,)))
    try:
        with torch.no_grad():
            y = _onednn_linear(x, w, b)
    except (RuntimeError, NotImplementedError):
        return False
    return y.shape == (3, 1, 40) and torch.allclose(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


FUNCTIONS: dict[str, Callable] = {
    TORCH: lambda x, w, b: F.linear(x, w, b),
    ONEDNN: _onednn_linear,
    C: cpu_linear.few_rows_linear,
}


def candidates(dtype: torch.dtype) -> list[str]:
    """The paths that can run `dtype` weights here (oneDNN's op is used for fp32 only)."""
    paths = [TORCH]
    if dtype == torch.float32 and onednn_available():
        paths.append(ONEDNN)
    if dtype in cpu_linear.DTYPES and cpu_linear.available():
        paths.append(C)
    return paths


# The probe: one-row products over 8 weights of 1024 x 1024 (32 MB in fp32, past a core's L2, as a
# model's weights are), rounds of all paths interleaved, medians; a path must beat PyTorch by MARGIN.
PROBE_SHAPE, PROBE_WEIGHTS, PROBE_ROUNDS, MARGIN = (1024, 1024), 8, 9, 0.95


def _probe_seconds(path: str, weights: list[torch.Tensor], x: torch.Tensor) -> float:
    f = FUNCTIONS[path]
    t = time.perf_counter()
    for w in weights:
        f(x, w, None)
    return time.perf_counter() - t


class Paths(NamedTuple):
    rows: str  # products of up to cpu_linear.MAX_ROWS rows: decoding
    prefill: str  # longer ones


@functools.lru_cache(maxsize=None)
def fastest_paths(threads: int, dtype: torch.dtype = torch.float32) -> Paths:
    """The paths inference Linears of `dtype` weights take on this machine at this thread count
    (measured once per process, dtype and thread count, about 50-80 ms), so every model of a process
    takes the same paths and a comparison between variants stays fair."""
    paths = candidates(dtype)
    if paths == [TORCH]:
        return Paths(TORCH, TORCH)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.rand(PROBE_SHAPE, generator=gen).to(dtype) for _ in range(PROBE_WEIGHTS)]
    x = torch.rand(1, PROBE_SHAPE[1], generator=gen).to(dtype)
    times: dict[str, list[float]] = {path: [] for path in paths}
    with torch.no_grad():
        for r in range(PROBE_ROUNDS + 1):
            for path, ts in times.items():
                seconds = _probe_seconds(path, weights, x)
                if r:  # the first round warms up
                    ts.append(seconds)
    median = {path: statistics.median(ts) for path, ts in times.items()}
    wins = [p for p in paths if p == TORCH or median[p] <= MARGIN * median[TORCH]]
    rows = min(wins, key=median.__getitem__)
    prefill = ONEDNN if ONEDNN in wins else TORCH
    return Paths(rows, prefill)


def linear_paths(dtype: torch.dtype = torch.float32) -> Paths:
    """What inference Linears on a CPU with `dtype` weights compute through in this process."""
    if kv_decode.policy() == "off":
        return Paths(TORCH, TORCH)
    return fastest_paths(torch.get_num_threads(), dtype)


def describe(paths: Paths) -> str:
    """For bench's table: "torch", or e.g. "c (decode), onednn (prefill)"."""
    return paths.rows if paths.rows == paths.prefill else f"{paths.rows} (decode), {paths.prefill} (prefill)"


class InferenceLinear(nn.Linear):
    """A Linear whose CPU forward without gradients takes the paths it was given (`paths`); anything
    else, and any input a path does not take, is nn.Linear's."""

    paths: Paths = Paths(TORCH, TORCH)
    _weights_checked: tuple = ()  # (weight's identity, whether the C loop takes it): checked once per weight

    def _c_takes_weights(self) -> bool:
        w, b = self.weight, self.bias
        key = (w.data_ptr(), w.dtype, w.device, w.stride(), None if b is None else (b.data_ptr(), b.dtype))
        if self._weights_checked[:1] != (key,):
            self._weights_checked = (key, cpu_linear.weight_applies(w, b))
        return self._weights_checked[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return super().forward(x)
        rows = x.numel() // self.in_features
        path = self.paths.rows if rows <= cpu_linear.MAX_ROWS else self.paths.prefill
        if path == C:
            if cpu_linear.input_applies(x, self.in_features) and self._c_takes_weights():
                return cpu_linear.few_rows_linear(x, self.weight, self.bias)
            path = self.paths.prefill
        if path == ONEDNN and self.weight.dtype == torch.float32 and x.dtype == torch.float32 and x.device.type == "cpu":
            return _onednn_linear(x, self.weight, self.bias)
        return super().forward(x)


def use_fast_linears(model: nn.Module, paths: Paths | None = None) -> int:
    """Every plain nn.Linear of a CPU model (fp32 or bf16) computes through the fastest paths here
    (`linear_paths`, or the `paths` given) from now on: its class changes, its parameters stay, tied
    weights included; subclasses with their own forward are left alone. Returns how many were
    switched: none where every path is PyTorch's or QKVLAB_DECODE_KERNEL=off."""
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.device.type == "cpu"]
    dtypes = {m.weight.dtype for m in linears}
    # A GPU model, or one of a dtype no other path takes, has nothing to switch: no probe for it.
    if not linears or len(dtypes) != 1 or kv_decode.policy() == "off" or candidates(dtypes.pop()) == [TORCH]:
        return 0
    paths = paths or linear_paths(linears[0].weight.dtype)
    if paths == (TORCH, TORCH):
        return 0
    for module in linears:
        module.__class__ = InferenceLinear
        module.paths = paths
    return len(linears)
