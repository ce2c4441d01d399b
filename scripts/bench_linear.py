"""fp32 Linear speed on this CPU: PyTorch's F.linear (MKL) against oneDNN (qkvlab/model/onednn_linear.py).

Weights shaped like one `model=small` forward (6 blocks of qkv, out, SwiGLU up and down; an 8192-row head),
times M rows: M=1 is batch-1 decoding, where every weight is read once per token (GB/s), large M is
prefill (GFLOP/s). Medians of interleaved rounds, so a shared machine's drift hits both alike.

    python scripts/bench_linear.py [--threads 2] [--rows 1,4,16,2048] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from qkvlab.model.onednn_linear import _onednn_linear, available

SHAPES = [(1152, 384), (384, 384), (2048, 384), (384, 1024)] * 6 + [(8192, 384)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rows", default="1,4,16,2048")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    if not available():
        raise SystemExit("bench_linear: oneDNN's Linear is not available in this torch build")
    torch.set_num_threads(args.threads)
    weights = [torch.randn(*s) for s in SHAPES]
    nbytes = sum(w.numel() * 4 for w in weights)
    flops_per_row = sum(2 * w.numel() for w in weights)
    print(f"{len(weights)} weights, {nbytes / 1e6:.1f} MB, {args.threads} threads")
    with torch.no_grad():
        for m in (int(r) for r in args.rows.split(",")):
            xs = {k: torch.randn(m, k) for k in {w.shape[1] for w in weights}}
            paths = {"mkl": lambda w, x: F.linear(x, w), "onednn": lambda w, x: _onednn_linear(x, w, None)}
            times: dict[str, list[float]] = {name: [] for name in paths}
            for r in range(args.rounds + 1):
                for name, f in paths.items():
                    t = time.perf_counter()
                    for w in weights:
                        f(w, xs[w.shape[1]])
                    if r:
                        times[name].append(time.perf_counter() - t)
            cells = []
            for name, ts in times.items():
                s = statistics.median(ts)
                cells.append(f"{name} {s * 1e3:7.2f} ms {nbytes / s / 1e9:6.1f} GB/s {m * flops_per_row / s / 1e9:7.1f} GFLOP/s")
            ratio = statistics.median(times["mkl"]) / statistics.median(times["onednn"])
            print(f"rows {m:5d}: " + " | ".join(cells) + f" | onednn {ratio:.2f}x")


if __name__ == "__main__":
    main()
