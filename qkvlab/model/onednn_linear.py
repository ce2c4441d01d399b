"""fp32 inference Linears on a CPU through oneDNN, the matmul library bundled with PyTorch.

PyTorch sends fp32 Linears on a CPU to MKL, and MKL is slow on AMD CPUs: on a 2-core AMD EPYC,
the one-row products of decoding (batch 1, one token) read `model=small`'s weights at 10 GB/s with
MKL and at 16-19 GB/s with oneDNN, and a 2048-row prefill product ran at 87-154 GFLOP/s against
204-207 (`scripts/bench_linear.py`). Decoding reads every weight once per token, so this cost is paid
by every variant alike and dilutes what a smaller KV cache saves. oneDNN computes the same fp32
products (only the summation order differs, as between any two BLAS kernels).

The entry point, `torch.ops.mkldnn._linear_pointwise`, is the one torch.compile's CPU backend uses
for frozen Linears; it is not public API, so `available()` checks once that it exists and agrees
with `F.linear`, and everything falls back to `F.linear` when it does not. Inference only: the op
has no backward, so a forward that needs gradients takes `F.linear` too. QKVLAB_DECODE_KERNEL=off
(kv_decode.py) turns this off with the decode kernels, for plain-PyTorch comparisons.
"""

from __future__ import annotations

import functools

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


def use_onednn(model: nn.Module) -> int:
    """Every plain nn.Linear of a CPU fp32 model computes through oneDNN from now on (its class changes,
    its parameters stay, tied weights included); subclasses with their own forward are left alone.
    Returns how many were switched: none where oneDNN is missing or QKVLAB_DECODE_KERNEL=off."""
    if kv_decode.policy() == "off" or not available():
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32:
            module.__class__ = OneDnnLinear
            switched += 1
    return switched
