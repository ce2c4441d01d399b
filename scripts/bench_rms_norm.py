"""RMSNorm forward + backward at model=small's training shape (8 x 512 x 384, fp32, CPU): qkvlab's
RMSNorm (qkvlab/model/rms_norm.py, hand-written backward) against F.rms_norm through autograd, with
the fused F.layer_norm for scale; interleaved rounds, medians after three warm-up rounds.

    python scripts/bench_rms_norm.py
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from qkvlab.model.rms_norm import RMSNorm


def main() -> None:
    torch.manual_seed(0)
    x0, g = torch.randn(8, 512, 384), torch.randn(8, 512, 384)
    ours, plain, layer = RMSNorm(384, eps=1e-5), nn.RMSNorm(384, eps=1e-5), nn.LayerNorm(384, eps=1e-5)
    paths = {"F.rms_norm": plain, "qkvlab RMSNorm": ours, "F.layer_norm": layer}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(28):
        for name, norm in paths.items():
            x = x0.detach().requires_grad_()
            t = time.perf_counter()
            norm(x).backward(g)
            if r >= 3:
                times[name].append(time.perf_counter() - t)
    print(f"{torch.get_num_threads()} threads, forward + backward on {tuple(x0.shape)}:")
    for name, ts in times.items():
        print(f"  {name:15s} {statistics.median(ts) * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
