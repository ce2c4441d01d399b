"""RMSNorm for CPU training with a hand-written backward.

On a CPU, `F.rms_norm` is PyTorch's composite (square, mean, add, rsqrt, two products), and
autograd saves and walks each piece: on an Intel Xeon the 13 norms of a `model=small` step took
9.6 ms each forward and backward at (8, 512, 384), against 1.3 ms for the fused LayerNorm, so the
default block lost about 8% of its step to them. Here the backward, dx = inv · (g·w − x̂ ·
mean(g·w·x̂)) with x̂ = x · inv, is written out, and both directions run as one pass each in C
(kernels/cpu_train.py) where the kernels build, else as a few PyTorch ops
(`scripts/bench_rms_norm.py` times all three). Inference without gradients on a CPU in fp32
takes the same C forward: decoding's one-row norm ran at 40-55 µs through F.rms_norm's six ops
inside a `model=small` token on an AVX2 EPYC, 13 of them a token; so does a model cast to bf16
(F.rms_norm's upcasts and casts back took 0.55 of a 2.3 ms bf16 `k_eq_v` token on a Zen 5 EPYC).
Elsewhere (CUDA has a fused kernel, autocast keeps its own rules) it is `nn.RMSNorm` unchanged; the parameters and the
state_dict are nn.RMSNorm's.
"""

from __future__ import annotations

import torch
from torch import nn

from qkvlab.model.kernels import cpu_train


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.compiled = cpu_train.rms_norm_applies(x, weight)
        if ctx.compiled:
            y, inv = cpu_train.rms_norm_forward(x, weight, eps)
            ctx.save_for_backward(x, weight, inv)
            return y
        d = x.shape[-1]
        inv = torch.rsqrt(torch.linalg.vector_norm(x, 2, dim=-1, keepdim=True).square_().div_(d).add_(eps))
        ctx.save_for_backward(x, weight, inv)
        return (x * inv).mul_(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, inv = ctx.saved_tensors
        if ctx.compiled:
            dx, dw = cpu_train.rms_norm_backward(grad, x, weight, inv)
            return dx, dw if ctx.needs_input_grad[1] else None, None
        xhat = x * inv
        gw = grad * weight
        dot = (gw * xhat).sum(-1, keepdim=True).div_(x.shape[-1])
        dx = gw.sub_(xhat * dot).mul_(inv)
        dw = (grad * xhat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        return dx, dw, None


class RMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight is not None
            and self.weight.dtype == torch.float32
            and torch.is_grad_enabled()
            and (x.requires_grad or self.weight.requires_grad)
        ):
            return _RMSNormFn.apply(x, self.weight, self._eps(x))
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or (self.weight is not None and self.weight.requires_grad))
        if self.weight is not None and not needs_grad and cpu_train.rms_norm_inference_applies(x, self.weight):
            return cpu_train.rms_norm_forward(x, self.weight, self._eps(x), save=False)[0]
        return super().forward(x)

    def _eps(self, x: torch.Tensor) -> float:
        return self.eps if self.eps is not None else torch.finfo(x.dtype).eps
