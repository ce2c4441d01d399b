#!/usr/bin/env python3
"""Decode attention alone, one layer, on one CUDA GPU: the one-tensor cache kernel
(qkvlab/model/kernels/triton_decode.py, keys RoPE(S) in registers, values S) against what `mha`
does (SDPA over separate K and V) and against today's unfused `k_eq_v` path (rotate the whole
cache into new keys, then SDPA over keys and S).

  1. checks the kernel against a plain PyTorch reference on the GPU, bf16 and fp32, every head
     layout, both RoPE layouts, key gain and key RMSNorm, with and without RoPE;
  2. times one decode step (one new token) per layer for gpt2_124m-sized (12 heads, d_head 64) and
     paper_300m-sized (16 heads, d_head 64) layers at contexts 2048, 8192, 32768 and batch 1, 16,
     in bf16: each call is captured in a CUDA graph (so the GPU time, not Python's launch
     overhead, is measured), the graph replayed with torch.cuda.Event timing after warm-up, and
     the median of several replays reported. Inputs cycle over enough copies to exceed the L2 cache.

The rotary tables are in the cache's dtype, as a model cast to bf16 for inference holds them.
Bytes per step are counted in the table (mha reads K and V, 2·B·H·L·D elements; the kernel reads S,
B·KV·L·D, and the rotary tables, 2·L·D/2, shared across batch and heads, so read from DRAM about
once; the unfused path reads S twice, writes and reads the rotated keys); GB/s = counted bytes /
median time. They are measured where Nsight Compute is there: `ncu ... bench_gpu_decode.py --ncu`
runs one step of each path per shape between cudaProfilerStart and Stop, a short spin kernel between
steps, and `--ncu-report CSV PLAN` sums each step's dram__bytes_read.sum (caches flushed before each
kernel, ncu's default) against the cache's size (scripts/bench_gpu.sh runs both).

Usage: python3 scripts/bench_gpu_decode.py            (CUDA; under 2 minutes on an H100/H200)
       python3 scripts/bench_gpu_decode.py --dry-run  (CPU, Triton's interpreter, tiny shapes)
       ncu --profile-from-start off --cache-control all --clock-control none --print-units base --csv \
           --metrics dram__bytes_read.sum,gpu__time_duration.sum --log-file CSV \
           python3 scripts/bench_gpu_decode.py --ncu > PLAN
       python3 scripts/bench_gpu_decode.py --ncu-report CSV PLAN
Needs torch and triton only (not qkvlab's other dependencies)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "qkvlab" / "model" / "kernels"


def load_kernels():
    """The kernel package by path, so qkvlab's package (and its Hydra dependencies) is not needed."""
    spec = importlib.util.spec_from_file_location("qkvlab_kernels", KERNELS / "__init__.py", submodule_search_locations=[str(KERNELS)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["qkvlab_kernels"] = pkg
    spec.loader.exec_module(pkg)
    return importlib.import_module("qkvlab_kernels.triton_decode")


def tables(L, D, device):
    import torch

    inv = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float32, device=device) / D)
    angle = torch.outer(torch.arange(L, dtype=torch.float32, device=device), inv)
    return angle.cos(), angle.sin()


def rope(x, cos, sin, pairs):
    """RoPE with one angle per pair, in either layout, computed in x's dtype (as the model does)."""
    import torch

    c, s = cos.to(x.dtype), sin.to(x.dtype)
    if pairs:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), -1).flatten(-2)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1)


def reference(q, s, cos, sin, scale, pairs, gain, eps):
    """fp32: keys = RoPE(norm/gain(S)), SDPA over keys and S with GQA."""
    import torch.nn.functional as F

    qf, sf = q.float(), s.float()
    k = sf
    if eps is not None:
        k = F.rms_norm(sf, (sf.shape[-1],), gain.float(), eps)
    elif gain is not None:
        k = sf * gain.float()
    if cos is not None:
        k = rope(k, cos, sin, pairs)
    y = F.scaled_dot_product_attention(qf[:, :, None], k, sf, scale=scale, enable_gqa=q.shape[1] != s.shape[1])
    return y[:, :, 0]


def cases(dry):
    """(dtype, D, H, KV, pairs, key, rope): every option once, each head layout, each RoPE layout,
    odd and large head sizes; few enough distinct compilations to stay quick."""
    import torch

    bf16, f32 = torch.bfloat16, torch.float32
    if dry:
        return [(dt, 48, H, KV, pairs, key, True) for dt in (f32, bf16) for H, KV in ((4, 4), (4, 2), (4, 1)) for pairs in (False, True) for key in ("none", "norm")]
    out = [(dt, 64, 8, 2, pairs, key, True) for dt in (bf16, f32) for pairs in (False, True) for key in ("none", "gain", "norm")]
    out += [(dt, 64, H, KV, False, "norm", True) for dt in (bf16, f32) for H, KV in ((4, 4), (4, 1))]
    out += [(dt, 64, 8, 2, False, key, False) for dt in (bf16, f32) for key in ("none", "norm")]
    out += [(bf16, D, 8, 2, False, "norm", True) for D in (48, 128, 256)] + [(f32, 48, 4, 4, True, "gain", True)]
    return out


def check(td, device, dry):
    import torch

    L = 70 if dry else 3000
    failures = n = 0
    all_cases = cases(dry)
    for n, (dtype, D, H, KV, pairs, key, use_rope) in enumerate(all_cases):
        g = torch.Generator(device="cpu").manual_seed(n)
        buf = torch.randn(2, KV, L + 9, D, generator=g).to(device=device, dtype=dtype)
        s = buf[:, :, :L]
        q = torch.randn(2, H, D, generator=g).to(device=device, dtype=dtype)
        cos, sin = tables(L, D, device) if use_rope else (None, None)
        gain = (1 + 0.3 * torch.randn(D, generator=g)).to(device=device, dtype=dtype) if key != "none" else None
        eps = 1e-6 if key == "norm" else None
        scale = D**-0.5
        ref = reference(q, s, cos, sin, scale, pairs, gain, eps)
        for mma in (False, True) if dtype == torch.bfloat16 else (False,):
            y = td.decode_shared_kv(q, s, cos, sin, scale=scale, pairs=pairs, key_gain=gain, key_norm_eps=eps, mma=mma)
            err = (y.float() - ref).abs().max().item()
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            n += 1
            if not err <= tol:
                failures += 1
                print(f"MISMATCH {dtype} D={D} H={H} KV={KV} pairs={pairs} key={key} rope={use_rope} mma={mma}: max |err| {err:.2e} > {tol}")
    print(f"check: {n - failures}/{n} kernel outputs match the fp32 reference (fp32 within 1e-4, bf16 within 2e-2)")
    return failures == 0


class Timer:
    """Median seconds per call of fn over `copies` rotating inputs; CUDA graphs + events on a GPU."""

    def __init__(self, device, dry):
        self.device, self.dry = device, dry

    def __call__(self, calls):
        import torch

        if self.dry:
            for c in calls:
                c()
            t0 = time.perf_counter()
            for c in calls:
                c()
            return (time.perf_counter() - t0) / len(calls)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                for c in calls:
                    c()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        per_graph = max(len(calls), 20)
        with torch.cuda.graph(graph):
            for i in range(per_graph):
                calls[i % len(calls)]()
        for _ in range(3):
            graph.replay()
        times = []
        for _ in range(7):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / per_graph)
        return statistics.median(times)


def bench(td, device, dry):
    import torch
    import torch.nn.functional as F

    dtype = torch.bfloat16
    models = {"tiny": (2, 16)} if dry else {"gpt2_124m": (12, 64), "paper_300m": (16, 64)}
    contexts = (64, 200) if dry else (2048, 8192, 32768)
    batches = (1, 2) if dry else (1, 16)
    timer = Timer(device, dry)
    el = torch.tensor([], dtype=dtype).element_size()
    l2 = 1 << 20 if dry else 60 << 20
    rows = []
    for name, (H, D) in models.items():
        print(f"timing {name} ...", flush=True)
        for B in batches:
            for L in contexts:
                kv_bytes = B * H * L * D * el
                copies = max(1, math.ceil(4 * l2 / kv_bytes))
                copies = min(copies, 8)
                scale = D**-0.5
                cos, sin = tables(L, D, device)
                cos_c, sin_c = cos.to(dtype), sin.to(dtype)
                ins = []
                for _ in range(copies):
                    q = torch.randn(B, H, D, device=device, dtype=dtype)
                    s = torch.randn(B, H, L, D, device=device, dtype=dtype)
                    k = torch.randn(B, H, L, D, device=device, dtype=dtype)
                    ins.append((q, s, k))
                fused = [lambda q=q, s=s: td.decode_shared_kv(q, s, cos_c, sin_c, scale=scale, pairs=False) for q, s, _ in ins]
                fused_mma = [lambda q=q, s=s: td.decode_shared_kv(q, s, cos_c, sin_c, scale=scale, pairs=False, mma=True) for q, s, _ in ins]
                mha = [lambda q=q, s=s, k=k: F.scaled_dot_product_attention(q[:, :, None], k, s, scale=scale) for q, s, k in ins]
                unfused = [
                    lambda q=q, s=s: F.scaled_dot_product_attention(q[:, :, None], rope(s, cos_c, sin_c, False), s, scale=scale)
                    for q, s, _ in ins
                ]
                t_mha, t_fused, t_mma, t_unfused = timer(mha), timer(fused), timer(fused_mma), timer(unfused)
                s_bytes = B * H * L * D * el
                table_bytes = 2 * L * (D // 2) * el
                paths = (
                    ("mha (SDPA, K+V)", t_mha, 2 * s_bytes),
                    ("k_eq_v kernel (S once)", t_fused, s_bytes + table_bytes),
                    ("k_eq_v kernel, mma=True", t_mma, s_bytes + table_bytes),
                    ("k_eq_v unfused (rotate+SDPA)", t_unfused, 4 * s_bytes + table_bytes),
                )
                for method, t, counted in paths:
                    rows.append((name, B, L, method, t * 1e6, counted / 1e6, counted / t / 1e9, t_mha / t))
                del ins, fused, fused_mma, mha, unfused
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    head = ("model", "batch", "context", "path", "us/step", "MB read/step", "GB/s", "x mha")
    print(f"{head[0]:<11}{head[1]:>6}{head[2]:>9}  {head[3]:<30}{head[4]:>10}{head[5]:>14}{head[6]:>9}{head[7]:>8}")
    for r in rows:
        print(f"{r[0]:<11}{r[1]:>6}{r[2]:>9}  {r[3]:<30}{r[4]:>10.1f}{r[5]:>14.2f}{r[6]:>9.0f}{r[7]:>8.2f}")


def tune(td, device, dry, timer):
    """Launch plans for a one-sequence long context and a batched one (gpt2_124m-sized heads), with
    the rotary tables in fp32, in bf16 (a model cast to bf16 holds them so) and without RoPE."""
    import torch

    shapes = [(1, 2, 16, 200)] if dry else [(1, 12, 64, 32768), (16, 12, 64, 8192)]
    if dry:
        opts = [(16, 1, 2, 4), (32, 2, 1, 8)]
    else:
        opts = [(b, w, 3, 8) for b, w in ((16, 1), (32, 1), (32, 2), (32, 4), (64, 2), (64, 4), (128, 4))]
        opts += [(32, 2, 3, 16), (32, 1, 3, 16), (64, 4, 3, 16)]
    mma_opts = [(16, 4, 2, 4), (32, 4, 2, 8)] if dry else [(b, w, 3, p) for b in (32, 64, 128) for w in (4, 8) for p in (4, 8)]
    for B, H, D, L in shapes:
        q = torch.randn(B, H, D, device=device, dtype=torch.bfloat16)
        s = torch.randn(B, H, L, D, device=device, dtype=torch.bfloat16)
        cos, sin = tables(L, D, device)
        for label, c, sn in (("fp32 tables", cos, sin), ("bf16 tables", cos.bfloat16(), sin.bfloat16()), ("no rope", None, None)):
            res = []
            for b, w, st, per_sm in opts:
                t = timer([lambda: td.decode_shared_kv(q, s, c, sn, scale=0.125, pairs=False, block=b, num_warps=w, num_stages=st, programs_per_sm=per_sm)])
                res.append((t, f"b{b} w{w} s{st} p{per_sm}: {t * 1e6:.1f} us {s.numel() * 2 / t / 1e9:.0f} GB/s"))
            for b, w, st, per_sm in mma_opts:
                t = timer([lambda: td.decode_shared_kv(q, s, c, sn, scale=0.125, pairs=False, block=b, num_warps=w, num_stages=st, programs_per_sm=per_sm, mma=True)])
                res.append((t, f"mma b{b} w{w} s{st} p{per_sm}: {t * 1e6:.1f} us {s.numel() * 2 / t / 1e9:.0f} GB/s"))
            t = timer([lambda: td.decode_shared_kv(q, s, c, sn, scale=0.125, pairs=False)])
            print(f"tune B={B} H={H} D={D} L={L} bf16 cache, {label}: default {t * 1e6:.1f} us; " + "; ".join(r for _, r in sorted(res)), flush=True)


NCU_SHAPES = ((1, 12, 64, 32768), (16, 12, 64, 8192), (1, 16, 64, 32768))  # (B, heads, d_head, L): gpt2_124m, paper_300m
SEPARATOR = "spin"  # torch.cuda._sleep's kernel, launched between profiled steps


def ncu_steps(td, device):
    """One decode step of mha's SDPA and of the kernel per shape, profiled (cudaProfilerStart/Stop)
    with a spin kernel after each, and a plan line per step: what ncu_report matches them against."""
    import json

    import torch
    import torch.nn.functional as F

    dtype = torch.bfloat16
    steps = []
    for B, H, D, L in NCU_SHAPES:
        q = torch.randn(B, H, D, device=device, dtype=dtype)
        s = torch.randn(B, H, L, D, device=device, dtype=dtype)
        k = torch.randn(B, H, L, D, device=device, dtype=dtype)
        cos, sin = (t.to(dtype) for t in tables(L, D, device))
        cache = B * H * L * D * s.element_size()
        shape = f"B={B} H={H} D={D} L={L}"
        steps.append((f"{shape} mha (SDPA, K+V)", 2 * cache, lambda q=q, s=s, k=k: F.scaled_dot_product_attention(q[:, :, None], k, s, scale=D**-0.5)))
        steps.append((f"{shape} k_eq_v kernel (S once)", cache, lambda q=q, s=s, c=cos, n=sin: td.decode_shared_kv(q, s, c, n, scale=D**-0.5, pairs=False)))
    for _, _, fn in steps:  # compile and warm up outside the profiled range
        fn()
    torch.cuda._sleep(1000)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for _, _, fn in steps:
        fn()
        torch.cuda._sleep(1000)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    for name, cache, _ in steps:
        print("PLAN " + json.dumps({"step": name, "cache_bytes": cache}), flush=True)


def ncu_kernels(csv_path):
    """[(kernel name, {metric: value})] in launch order, from ncu's --csv log (its own lines, '==PROF==
    ...', before the table are skipped; values in base units, thousands separators dropped)."""
    import csv

    lines = Path(csv_path).read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        raise ValueError(f"{csv_path}: no ncu CSV table (no line starting with \"ID\")")
    kernels: dict[str, tuple[str, dict[str, float]]] = {}
    for row in csv.DictReader(lines[start:]):
        name, metrics = kernels.setdefault(row["ID"], (row["Kernel Name"], {}))
        try:
            metrics[row["Metric Name"]] = float(row["Metric Value"].replace(",", ""))
        except ValueError:
            pass
    return [kernels[i] for i in sorted(kernels, key=int)]


def ncu_report(csv_path, plan_path):
    """Each profiled step's DRAM bytes read (its kernels between spin kernels) against its cache's size."""
    import json

    plan = [json.loads(ln[5:]) for ln in Path(plan_path).read_text().splitlines() if ln.startswith("PLAN ")]
    groups, cur = [], []
    for name, metrics in ncu_kernels(csv_path):
        if SEPARATOR in name:
            groups.append(cur)
            cur = []
        else:
            cur.append((name, metrics))
    if len(groups) != len(plan):
        raise ValueError(f"ncu profiled {len(groups)} steps (spin kernels) where the plan has {len(plan)}; see {csv_path}")
    print(f"{'step':<46}{'kernels':>8}{'MB read':>10}{'cache MB':>10}{'read/cache':>11}{'us':>9}")
    for step, kernels in zip(plan, groups):
        read = sum(m.get("dram__bytes_read.sum", float("nan")) for _, m in kernels)
        ns = sum(m.get("gpu__time_duration.sum", float("nan")) for _, m in kernels)
        print(f"{step['step']:<46}{len(kernels):>8}{read / 1e6:>10.2f}{step['cache_bytes'] / 1e6:>10.2f}"
              f"{read / step['cache_bytes']:>11.3f}{ns / 1e3:>9.1f}   {', '.join(sorted({n for n, _ in kernels}))}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton's interpreter, tiny shapes: runs every code path, times nothing real")
    ap.add_argument("--tune", action="store_true", help="time launch plans only")
    ap.add_argument("--ncu", action="store_true", help="one profiled step per path and shape, for ncu (see above)")
    ap.add_argument("--ncu-report", nargs=2, metavar=("CSV", "PLAN"), help="DRAM bytes per step from ncu's CSV and --ncu's output")
    args = ap.parse_args(argv)
    if args.ncu_report:
        try:
            return ncu_report(*args.ncu_report)
        except (OSError, ValueError, KeyError) as e:
            print(f"bench_gpu_decode: error: {e}", file=sys.stderr)
            return 2
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu_decode: error: no CUDA device; run on a GPU, or pass --dry-run", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    td = load_kernels()
    if not td.available():
        print("bench_gpu_decode: error: triton does not import; pip install triton", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.dry_run:
        print("dry run: CPU, Triton interpreter, tiny shapes; the timings mean nothing")
    else:
        p = torch.cuda.get_device_properties(device)
        print(f"{p.name}, {p.multi_processor_count} SMs, torch {torch.__version__}, triton {importlib.import_module('triton').__version__}")
    if args.tune:
        tune(td, device, args.dry_run, Timer(device, args.dry_run))
        return 0
    if args.ncu:
        if args.dry_run:
            print("bench_gpu_decode: error: --ncu needs a CUDA device", file=sys.stderr)
            return 2
        ncu_steps(td, device)
        return 0
    ok = check(td, device, args.dry_run)
    print(f"checked in {time.perf_counter() - t0:.0f} s", flush=True)
    bench(td, device, args.dry_run)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
