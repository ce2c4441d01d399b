"""The CPU decode kernel alone, over S and over `mha`'s K and V, against SDPA over K and V and a plain read of S.

Shapes of `model=small` (8 KV heads of 48 features, batch 1), six layers' caches visited in turn so each
call reads from memory, not from cache, as whole-model decoding does. Medians of interleaved rounds.

    python scripts/bench_cpu_decode.py [--threads 2] [--lengths 2048,8192] [--rounds 10] [--dtype fp32,bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from qkvlab.model.kernels.cpu_decode import available, decode_shared_kv

LAYERS, KV, D = 6, 8, 48


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--lengths", default="2048,8192")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--dtype", default="fp32", help="comma-separated: fp32, bf16 (the caches' dtype)")
    args = ap.parse_args()
    if not available():
        raise SystemExit("bench_cpu_decode: the kernel could not be built (no C compiler with OpenMP)")
    torch.set_num_threads(args.threads)
    for name, L in ((n, int(x)) for n in args.dtype.split(",") for x in args.lengths.split(",")):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        print(f"{args.threads} threads, {LAYERS} layers of (1, {KV}, {L}, {D}) {name}")
        s = [torch.randn(1, KV, L, D, dtype=dtype) for _ in range(LAYERS)]
        k = [torch.randn(1, KV, L, D, dtype=dtype) for _ in range(LAYERS)]
        v = [torch.randn(1, KV, L, D, dtype=dtype) for _ in range(LAYERS)]
        q = torch.randn(1, KV, D, dtype=dtype)
        angles = torch.rand(L, D)
        cos, sin = (t.to(dtype)[:, : D // 2] for t in (angles.cos(), angles.sin()))  # views of (L, D) tables, as the model passes
        paths = {
            "kernel over S (RoPE in registers)": (lambda i: decode_shared_kv(q, s[i], cos, sin, scale=D**-0.5), 1),
            "kernel over K and V (mha)": (lambda i: decode_shared_kv(q, k[i], None, None, scale=D**-0.5, values=v[i]), 2),
            "sdpa over K and V (mha)": (lambda i: F.scaled_dot_product_attention(q[:, :, None], k[i], v[i]), 2),
            "read S (torch.sum)": (lambda i: s[i].sum(), 1),
        }
        times: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(args.rounds + 1):
            for name, (f, _) in paths.items():
                t = time.perf_counter()
                for i in range(LAYERS):
                    f(i)
                if r:
                    times[name].append(time.perf_counter() - t)
        for name, (_, tensors) in paths.items():
            sec = statistics.median(times[name])
            nbytes = LAYERS * tensors * KV * L * D * s[0].element_size()
            print(f"L={L:6d}  {name:36s} {sec / LAYERS * 1e3:7.3f} ms/layer  {nbytes / sec / 1e9:6.1f} GB/s")


if __name__ == "__main__":
    main()
