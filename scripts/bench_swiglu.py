"""SwiGLU forward + backward at model=small's training shape (8 x 512 x 2·1024, fp32, CPU): qkvlab's
swiglu (qkvlab/model/swiglu.py, gradients written into one buffer) against chunk + F.silu(gate) · up
through autograd, with the GELU MLP's F.gelu for scale; interleaved rounds, medians after three
warm-up rounds.

    python scripts/bench_swiglu.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qkvlab.bench.measure import interleaved_medians
from qkvlab.model.swiglu import swiglu


def autograd_swiglu(h: torch.Tensor) -> torch.Tensor:
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def main() -> None:
    torch.manual_seed(0)
    h0, g = torch.randn(8, 512, 2048), torch.randn(8, 512, 1024)
    inputs = {"autograd swiglu": (autograd_swiglu, h0), "qkvlab swiglu": (swiglu, h0), "F.gelu": (F.gelu, h0[..., :1024].contiguous())}
    paths = {name: (lambda f=f, x0=x0: f(x0.detach().requires_grad_()).backward(g)) for name, (f, x0) in inputs.items()}
    print(f"{torch.get_num_threads()} threads, forward + backward on {tuple(h0.shape)}:")
    for name, sec in interleaved_medians(paths, rounds=25).items():
        print(f"  {name:16s} {sec * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
