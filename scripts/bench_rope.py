"""RoPE forward + backward at model=small's training shape (8 x 8 heads x 512 x 48, q as a view of the
fused projection, fp32, CPU): qkvlab's rotate (one C pass each way where kernels/cpu_train.py builds),
its three-pass PyTorch form (`_rotate`, the backward the inverse rotation), and the textbook
x·cos + rotate_half(x)·sin through autograd; interleaved rounds, medians after three warm-up rounds.

    python scripts/bench_rope.py
"""

from __future__ import annotations

import torch

from qkvlab.bench.measure import interleaved_medians
from qkvlab.model.attention import _rotate, rotate


def textbook(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


def main() -> None:
    torch.manual_seed(0)
    B, H, T, D = 8, 8, 512, 48
    proj = torch.randn(B, T, 3 * H * D)
    q0 = proj[..., : H * D].view(B, T, H, D).transpose(1, 2)
    g = torch.randn(B, H, T, D)
    ang = torch.rand(T, D // 2) * 3
    ang = torch.cat((ang, ang), -1)
    cos, sin = ang.cos(), ang.sin()

    def autograd_path(f):
        return lambda: f(q0.detach().requires_grad_(), cos, sin).backward(g)

    def pytorch_three_pass():
        _rotate(q0, cos, sin)
        _rotate(g, cos, sin, sign=-1.0)

    paths = {"textbook (autograd)": autograd_path(textbook), "PyTorch three-pass": pytorch_three_pass, "qkvlab rotate": autograd_path(rotate)}
    print(f"{torch.get_num_threads()} threads, forward + backward on {(B, H, T, D)}:")
    for name, sec in interleaved_medians(paths, rounds=25).items():
        print(f"  {name:20s} {sec * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
