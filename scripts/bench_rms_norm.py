"""RMSNorm forward + backward at model=small's training shape (8 x 512 x 384, fp32, CPU): qkvlab's
RMSNorm (qkvlab/model/rms_norm.py: the C kernels of kernels/cpu_train.py, or its PyTorch form with
a hand-written backward where they cannot be built) against F.rms_norm through autograd, with the
fused F.layer_norm for scale; interleaved rounds, medians after three warm-up rounds.

    python scripts/bench_rms_norm.py
"""

from __future__ import annotations

import torch
from torch import nn

from qkvlab.bench.measure import interleaved_medians
from qkvlab.model.rms_norm import RMSNorm


def main() -> None:
    torch.manual_seed(0)
    x0, g = torch.randn(8, 512, 384), torch.randn(8, 512, 384)
    norms = {"F.rms_norm": nn.RMSNorm(384, eps=1e-5), "qkvlab RMSNorm": RMSNorm(384, eps=1e-5), "F.layer_norm": nn.LayerNorm(384, eps=1e-5)}
    paths = {name: (lambda norm=norm: norm(x0.detach().requires_grad_()).backward(g)) for name, norm in norms.items()}
    print(f"{torch.get_num_threads()} threads, forward + backward on {tuple(x0.shape)}:")
    for name, sec in interleaved_medians(paths, rounds=25).items():
        print(f"  {name:15s} {sec * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
