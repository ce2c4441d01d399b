"""`qkvlab bench [--variants ...] [overrides]`: every variant of one shape,
measured in one process, printed as a table and written as JSON."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from qkvlab.args import ArgumentParser, context_list
from qkvlab.checks import compose_config
from qkvlab.config import Config
from qkvlab.errors import ConfigError

DEFAULT_VARIANTS = "mha,k_eq_v,q_eq_k,q_eq_k_eq_v,gqa,k_eq_v_gqa,k_eq_v_mqa"
# Bench needs causal data for decoding and no W&B run; the user's overrides come after.
BASE_OVERRIDES = ("data=mqar", "logger=none")
DEFAULT_CONTEXTS = (512, 1024, 2048)
# The training sequence length bench picks by default: the model's context, up to this.
TRAIN_SEQ_CAP = 1024
# nanoGPT's block at the same shape: what the default block (RoPE, RMSNorm, SwiGLU, no biases) is timed against.
BLOCKS = {"default": (), "nanogpt": ("model.positions=learned", "model.norm=layernorm", "model.mlp=gelu", "model.bias=true")}


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="qkvlab bench",
        description="Training step time, tokens/s, FLOPs/token, MFU, peak memory, loop overhead, prefill/decode "
        "tokens/s and KV-cache bytes per variant. Example: qkvlab bench model=small --variants mha,k_eq_v",
    )
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default {DEFAULT_VARIANTS})")
    parser.add_argument("--contexts", type=context_list, default=None,
                        help=f"prefill/decode context lengths, at most model.context (default: those of "
                        f"{','.join(map(str, DEFAULT_CONTEXTS))} that fit it, else model.context)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--train-seq-len", type=int, default=None,
                        help=f"training sequence length (default: model.context, at most {TRAIN_SEQ_CAP}); the batch "
                        "shrinks to keep the data preset's tokens per step unless data.batch_size is given")
    parser.add_argument("--blocks", default="default",
                        help="comma-separated blocks to time each variant with: default (the model's), nanogpt "
                        f"({' '.join(BLOCKS['nanogpt'])})")
    parser.add_argument("--no-loop", action="store_true", help="skip timing the full train loop")
    parser.add_argument("--out", default=None, help="JSON path (default outputs/bench/bench_<model>_<time>.json)")
    parser.add_argument("overrides", nargs="*", help="config overrides as in train, e.g. model=small train.compile=true")
    ns = parser.parse_intermixed_args(args)
    for key in ("steps", "repeats", "decode_tokens"):
        if getattr(ns, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')}={getattr(ns, key)} must be at least 1")
    if ns.train_seq_len is not None and ns.train_seq_len < 2:
        raise ConfigError(f"--train-seq-len={ns.train_seq_len} must be at least 2")
    blocks = [b.strip() for b in ns.blocks.split(",") if b.strip()]
    bad = [b for b in blocks if b not in BLOCKS]
    if bad or not blocks:
        raise ConfigError(f"--blocks: {bad[0] if bad else 'empty'!r} is not a block; choose from {', '.join(BLOCKS)}")
    ns.blocks = blocks
    if ns.warmup < 0:
        raise ConfigError(f"--warmup={ns.warmup} must be >= 0")
    if any(o.split("=")[0].lstrip("+~") == "variant" for o in ns.overrides):
        raise ConfigError("pick variants with --variants mha,k_eq_v,... rather than variant=...")
    return ns


def bench_contexts(requested: Sequence[int] | None, configs: Sequence[Config]) -> tuple[int, ...]:
    """The prefill/decode lengths: those asked for, each within every variant's model.context."""
    context = min(cfg.model.context for cfg in configs)
    if requested is None:
        return tuple(c for c in DEFAULT_CONTEXTS if c <= context) or (context,)
    too_long = [c for c in requested if c > context]
    if too_long:
        raise ConfigError(f"--contexts: {too_long[0]} is above model.context={context}; give lengths up to {context}")
    return tuple(sorted(set(requested)))


def train_shape(cfg: Config, requested: int | None, overrides: Sequence[str]) -> tuple[int, int]:
    """(sequence length, batch) bench trains at: the model's context (capped) by default, with the data
    preset's tokens per step kept unless the user set data.batch_size."""
    keys = {o.split("=")[0].lstrip("+") for o in overrides}
    if requested is None and "data.seq_len" in keys:
        requested = cfg.data.seq_len
    seq = requested if requested is not None else min(cfg.model.context, TRAIN_SEQ_CAP)
    if seq > cfg.model.context:
        raise ConfigError(f"--train-seq-len={seq} is above model.context={cfg.model.context}; give at most {cfg.model.context}")
    if "data.batch_size" in keys:
        return seq, cfg.data.batch_size
    return seq, max(1, cfg.data.batch_size * cfg.data.seq_len // seq)


def bench(configs: Sequence[Config], overrides: Sequence[str], opts, names: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The report; None on ranks other than 0 under torchrun (rank 0 writes and prints it)."""
    from tqdm.auto import tqdm

    from qkvlab.bench.peaks import best_peak, device_peak
    from qkvlab.bench.run import bench_variants
    from qkvlab.model.kv_decode import policy as decode_policy
    from qkvlab.model.inference_linear import describe, linear_paths
    from qkvlab.train.distributed import session
    from qkvlab.train.device import compute_dtype, pick_device, resolve_precision

    first = configs[0]
    device = pick_device(first.train.device)
    precision = resolve_precision(first.train.precision, device, first.model.d_model)
    before = device_peak(device, precision)
    with session(first.train.parallel, first.train.device) as world:
        if world.distributed and opts.loop:
            opts = dataclasses.replace(opts, loop=False)  # the full loop writes a run directory: one process's job
        progress = (lambda cfgs: tqdm(cfgs, desc="bench: training", unit="variant")) if world.is_main else (lambda cfgs: cfgs)
        rows = bench_variants(list(configs), opts, progress, list(names or []) or None, world)
    if rows is None:
        return None
    peak, peak_source, device_name = best_peak(before, device_peak(device, precision))
    for row in rows:
        row["train/mfu"] = row["train/flops_per_token"] * row["train/tokens_per_s"] / peak
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "world_size": world.size,
        "parallel": world.parallel,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "precision": precision,
        "compile": first.train.compile,
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "model": first.model.name,
        "shape": {k: getattr(first.model, k) for k in ("n_layers", "d_model", "n_heads", "d_ff", "context")},
        "data": first.data.name,
        "seq_len": first.data.seq_len,
        "batch_size": first.data.batch_size,
        "overrides": list(overrides),
        "timing": {"steps": opts.steps, "repeats": opts.repeats, "warmup": opts.warmup,
                   "decode_tokens": opts.decode_tokens, "statistic": "median", "order": "round-robin over variants"},
        "decode_kernel": decode_policy(),
        "inference_linears": describe(linear_paths(compute_dtype(precision))) if device.type == "cpu" else "torch",
        "variants": rows,
    }


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(report: dict[str, Any]) -> str:
    contexts = list(report["variants"][0]["inference"])
    several = report.get("world_size", 1) > 1
    head = ["variant", "params", "GFLOP/tok", "step ms", "tok/s", *(["tok/s/dev"] if several else []), "MFU %", "peak MB",
            "loop +%", "KV B/tok", "closed", "vs mha"]
    head += [f"prefill@{c}" for c in contexts] + [f"decode@{c}" for c in contexts]
    rows = []
    for r in report["variants"]:
        rows.append([
            r["variant"], f"{r['params/total']:,}", f"{r['train/flops_per_token'] / 1e9:.3f}",
            f"{1e3 * r['train/step_s']:.1f}", f"{r['train/tokens_per_s']:,.0f}",
            *([f"{r['train/tokens_per_s_per_device']:,.0f}"] if several else []), f"{100 * r['train/mfu']:.1f}",
            _num(r["train/peak_memory_bytes"] and r["train/peak_memory_bytes"] / 2**20, ".0f"),
            _num(r["loop/overhead"] and 100 * r["loop/overhead"], "+.1f"),
            f"{r['kv_cache/bytes_per_token']:,.0f}", f"{r['kv_cache/bytes_per_token_closed_form']:,}",
            f"{r['kv_cache/ratio_vs_mha']:.4f}",
            *(f"{r['inference'][c]['prefill_tokens_per_s']:,.0f}" for c in contexts),
            *(f"{r['inference'][c]['decode_tokens_per_s']:,.1f}" for c in contexts),
        ])
    title = (
        f"qkvlab bench: model {report['model']} {report['shape']} on {report['device_name']} ({report['device']}, "
        f"{report['threads']} threads{', %d processes (%s)' % (report['world_size'], report['parallel']) if several else ''}), {report['precision']}{', compiled' if report['compile'] else ''}, "
        f"training batch {report['batch_size']} x {report['seq_len']}; peak {report['peak_flops'] / 1e9:,.1f} GFLOP/s "
        f"({report['peak_flops_source']}); medians of {report['timing']['repeats']} repeats"
    )
    decode_head = ["variant", "decode path"]
    for c in contexts:
        decode_head += [f"tok/s@{c}", f"MB/tok@{c}", f"GB/s@{c}"]
    decode_rows = []
    for r in report["variants"]:
        cells = [r["variant"], r.get("decode/path", "-")]
        for c in contexts:
            inf = r["inference"][c]
            cells += [f"{inf['decode_tokens_per_s']:,.1f}", f"{inf['decode_bytes_per_token'] / 1e6:,.2f}", f"{inf['decode_gb_per_s']:,.2f}"]
        decode_rows.append(cells)
    decoding = (
        f"decoding, batch 1 (MB/tok: weights + KV cache read per token, QKVLAB_DECODE_KERNEL={report.get('decode_kernel', 'auto')}, "
        f"Linears: {report.get('inference_linears', 'torch')}):"
    )
    return "\n".join([title, *_aligned(head, rows), decoding, *_aligned(decode_head, decode_rows)])


def _aligned(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [line(head), *(line(r) for r in rows)]


def bench_main(args: list[str]) -> None:
    from qkvlab.bench.noise import noise_warnings
    from qkvlab.bench.run import BenchOptions
    from qkvlab.files import write_json_atomic

    ns = parse_args(args)
    variants = [v.strip() for v in ns.variants.split(",") if v.strip()]
    if not variants:
        raise ConfigError("--variants is empty; e.g. --variants mha,k_eq_v")
    probe = compose_config([*BASE_OVERRIDES, *ns.overrides, f"variant={variants[0]}"])
    seq, batch = train_shape(probe, ns.train_seq_len, ns.overrides)
    shape = (f"data.seq_len={seq}", f"data.batch_size={batch}")
    configs, names = [], []
    for block in ns.blocks:
        for v in variants:
            configs.append(compose_config([*BASE_OVERRIDES, *ns.overrides, *BLOCKS[block], *shape, f"variant={v}"]))
            names.append(v if block == "default" else f"{v}/{block}")
    opts = BenchOptions(contexts=bench_contexts(ns.contexts, configs), steps=ns.steps, repeats=ns.repeats,
                        warmup=ns.warmup, decode_tokens=ns.decode_tokens, loop=not ns.no_loop)
    report = bench(configs, ns.overrides, opts, names)
    if report is None:
        return
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(ns.out or f"outputs/bench/bench_{report['model']}_{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    print(format_table(report), flush=True)
    print(f"  wrote {out}", flush=True)
    for line in noise_warnings(report):
        print(f"qkvlab: warning: {line}", file=sys.stderr, flush=True)
