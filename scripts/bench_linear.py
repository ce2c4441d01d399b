"""Inference Linear speed on this CPU, per path: PyTorch's F.linear (MKL for fp32), oneDNN, and the C loop
for few rows (qkvlab/model/inference_linear.py, qkvlab/model/kernels/cpu_linear.py).

Weights shaped like one `model=small` forward (6 blocks of qkv, out, SwiGLU up and down; an 8192-row head),
times M rows: M=1 is batch-1 decoding, where every weight is read once per token (GB/s), large M is
prefill (GFLOP/s). Medians of interleaved rounds, so a shared machine's drift hits all paths alike.

    python scripts/bench_linear.py [--threads 2] [--rows 1,4,16,2048] [--dtype fp32,bf16] [--rounds 15]
"""

from __future__ import annotations

import argparse

import torch

from qkvlab.bench.measure import interleaved_medians
from qkvlab.model.inference_linear import FUNCTIONS, candidates
from qkvlab.model.kernels import cpu_linear

SHAPES = [(1152, 384), (384, 384), (2048, 384), (384, 1024)] * 6 + [(8192, 384)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rows", default="1,4,16,2048")
    ap.add_argument("--dtype", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.dtype.split(","):
        dtype = DTYPES[name]
        weights = [torch.randn(*s).to(dtype) for s in SHAPES]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        flops_per_row = sum(2 * w.numel() for w in weights)
        print(f"{name}: {len(weights)} weights, {nbytes / 1e6:.1f} MB, {args.threads} threads")
        with torch.no_grad():
            for m in (int(r) for r in args.rows.split(",")):
                xs = {k: torch.randn(m, k).to(dtype) for k in {w.shape[1] for w in weights}}
                paths = [p for p in candidates(dtype) if p != "c" or m <= cpu_linear.MAX_ROWS]

                def run(path: str) -> None:
                    f = FUNCTIONS[path]
                    for w in weights:
                        f(xs[w.shape[1]], w, None)

                medians = interleaved_medians({p: (lambda p=p: run(p)) for p in paths}, rounds=args.rounds)
                cells = [
                    f"{p} {s * 1e3:7.2f} ms {nbytes / s / 1e9:6.1f} GB/s {m * flops_per_row / s / 1e9:7.1f} GFLOP/s"
                    for p, s in medians.items()
                ]
                best = min(medians, key=medians.__getitem__)
                print(f"rows {m:5d}: " + " | ".join(cells) + f" | fastest {best}, {medians['torch'] / medians[best]:.2f}x torch")


if __name__ == "__main__":
    main()
