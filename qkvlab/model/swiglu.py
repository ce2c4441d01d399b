"""SwiGLU, silu(gate)·up, over the fused up-projection's output with a hand-written backward.

The MLP's one Linear makes [gate | up]; split through autograd, the backward builds d(gate) and
d(up) as two tensors and then concatenates them into d(h), one more pass over the widest
activation of the block. Here both are written into one buffer, halves in place, with ATen's
fused `silu_backward`: at model=small's (8, 512, 2·1024) fp32 on 2 Xeon threads, forward and
backward took 11.3 ms against 16.5 ms through autograd (scripts/bench_swiglu.py). Saved tensors
are autograd's (h and silu(gate)), so memory is unchanged. Decoding's few rows on a CPU (fp32, or a model
cast to bf16) take one C pass (kernels/cpu_train.py), with or without gradients: a decoded row was three
PyTorch ops, and the whole-token decode step (decode_step.py) calls the same function, so the two agree to
the bit. Longer inputs keep PyTorch's vectorised silu, which ran 2x faster than the C loop at training shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qkvlab.model.kernels import cpu_train


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        a = F.silu(h.chunk(2, dim=-1)[0])
        ctx.save_for_backward(h, a)
        return _forward(h, a)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        h, a = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        dh = torch.empty_like(h)
        d_gate, d_up = dh.chunk(2, dim=-1)
        torch.mul(g, a, out=d_up)
        torch.ops.aten.silu_backward.grad_input(g * up, gate, grad_input=d_gate)
        return dh


def _forward(h: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
    """Decoding's few rows in one C pass, longer ones as silu(gate) · up (`a`: silu(gate) when made already)."""
    if cpu_train.swiglu_applies(h):
        return cpu_train.swiglu(h)
    gate, up = h.chunk(2, dim=-1)
    return (F.silu(gate) if a is None else a) * up


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate)·up of h = [gate | up] (last dimension); the same values with and without gradients."""
    if torch.is_grad_enabled() and h.requires_grad:
        return _SwiGLU.apply(h)
    return _forward(h)
