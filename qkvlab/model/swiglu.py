"""SwiGLU, silu(gate)·up, over the fused up-projection's output with a hand-written backward.

The MLP's one Linear makes [gate | up]; split through autograd, the backward builds d(gate) and
d(up) as two tensors and then concatenates them into d(h), one more pass over the widest
activation of the block. Here both are written into one buffer, halves in place, with ATen's
fused `silu_backward`: at model=small's (8, 512, 2·1024) fp32 on 2 Xeon threads, forward and
backward took 11.3 ms against 16.5 ms through autograd (scripts/bench_swiglu.py). Saved tensors
are autograd's (h and silu(gate)), so memory is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        a = F.silu(gate)
        ctx.save_for_backward(h, a)
        return a * up

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        h, a = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        dh = torch.empty_like(h)
        d_gate, d_up = dh.chunk(2, dim=-1)
        torch.mul(g, a, out=d_up)
        torch.ops.aten.silu_backward.grad_input(g * up, gate, grad_input=d_gate)
        return dh


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate)·up of h = [gate | up] (last dimension)."""
    if torch.is_grad_enabled() and h.requires_grad:
        return _SwiGLU.apply(h)
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up
