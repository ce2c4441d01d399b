"""fp32 inference Linears on a CPU through oneDNN, the matmul library bundled with PyTorch, where it
is the faster of the two on this machine.

PyTorch sends fp32 Linears on a CPU to MKL, and MKL is slow on AMD CPUs: on a 2-core AMD EPYC,
the one-row products of decoding (batch 1, one token) read `model=small`'s weights at 10 GB/s with
MKL and at 16-19 GB/s with oneDNN, and a 2048-row prefill product ran at 87-154 GFLOP/s against
204-207 (`scripts/bench_linear.py`). On an Intel Xeon it is the other way round (MKL 26 GB/s,
oneDNN 19.5), so no rule by vendor is safe: `onednn_is_faster` times both once per process on
one-row products over 32 MB of weights, interleaved, and oneDNN is used only where it wins by 5%.
Decoding reads every weight once per token, so this cost is paid by every variant alike and dilutes
what a smaller KV cache saves. oneDNN computes the same fp32 products (only the summation order
differs, as between any two BLAS kernels).

The entry point, `torch.ops.mkldnn._linear_pointwise`, is the one torch.compile's CPU backend uses
for frozen Linears; it is not public API, so `available()` checks once that it exists and agrees
with `F.linear`, and everything falls back to `F.linear` when it does not. Inference only: the op
has no backward, so a forward that needs gradients takes `F.linear` too. QKVLAB_DECODE_KERNEL=off
(kv_decode.py) turns this off with the decode kernels, for plain-PyTorch comparisons.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model import kv_decode


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


@functools.lru_cache(maxsize=None)
def available() -> bool:
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


# The probe: one-row products over 8 weights of 1024 x 1024 fp32 (32 MB, past a core's L2, as a
# model's weights are), rounds of both paths interleaved, medians; oneDNN must win by MARGIN.
PROBE_SHAPE, PROBE_WEIGHTS, PROBE_ROUNDS, MARGIN = (1024, 1024), 8, 9, 0.95


def _probe_seconds(path: str, weights: list[torch.Tensor], x: torch.Tensor) -> float:
    f = _onednn_linear if path == "onednn" else (lambda x, w, b: F.linear(x, w, b))
    t = time.perf_counter()
    for w in weights:
        f(x, w, None)
    return time.perf_counter() - t


@functools.lru_cache(maxsize=None)
def onednn_is_faster(threads: int) -> bool:
    """Whether oneDNN's one-row fp32 products beat F.linear's on this machine at this thread count
    (measured once per process and thread count, about 50 ms), so every model of a process takes the
    same path and a comparison between variants stays fair."""
    if not available():
        return False
    gen = torch.Generator().manual_seed(0)
    weights = [torch.rand(PROBE_SHAPE, generator=gen) for _ in range(PROBE_WEIGHTS)]
    x = torch.rand(1, PROBE_SHAPE[1], generator=gen)
    times: dict[str, list[float]] = {"torch": [], "onednn": []}
    with torch.no_grad():
        for r in range(PROBE_ROUNDS + 1):
            for path, ts in times.items():
                seconds = _probe_seconds(path, weights, x)
                if r:  # the first round warms up
                    ts.append(seconds)
    return statistics.median(times["onednn"]) <= MARGIN * statistics.median(times["torch"])


def linear_path() -> str:
    """What inference Linears on a CPU in fp32 compute through in this process: "onednn" or "torch"."""
    if kv_decode.policy() == "off" or not onednn_is_faster(torch.get_num_threads()):
        return "torch"
    return "onednn"


class OneDnnLinear(nn.Linear):
    """A Linear whose fp32 CPU forward without gradients runs in oneDNN; anything else is nn.Linear's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dtype == torch.float32
            and x.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        ):
            return _onednn_linear(x, self.weight, self.bias)
        return super().forward(x)


def use_onednn(model: nn.Module, *, measured: bool = True) -> int:
    """Every plain nn.Linear of a CPU fp32 model computes through oneDNN from now on (its class changes,
    its parameters stay, tied weights included); subclasses with their own forward are left alone.
    Returns how many were switched: none where oneDNN is missing, QKVLAB_DECODE_KERNEL=off, or (when
    `measured`) oneDNN is not the faster path here (`linear_path`)."""
    linears = [
        m for m in model.modules()
        if type(m) is nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
    ]
    # A bf16 or GPU model has nothing to switch: no probe for it.
    if not linears or kv_decode.policy() == "off" or not available() or (measured and linear_path() != "onednn"):
        return 0
    for module in linears:
        module.__class__ = OneDnnLinear
    return len(linears)
