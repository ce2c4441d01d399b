"""`qkvlab bench [--variants ...] [overrides]`: every variant of one shape,
measured in one process, printed as a table and written as JSON."""

from __future__ import annotations

import argparse
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
    parser.add_argument("--no-loop", action="store_true", help="skip timing the full train loop")
    parser.add_argument("--out", default=None, help="JSON path (default outputs/bench/bench_<model>_<time>.json)")
    parser.add_argument("overrides", nargs="*", help="config overrides as in train, e.g. model=small train.compile=true")
    ns = parser.parse_intermixed_args(args)
    for key in ("steps", "repeats", "decode_tokens"):
        if getattr(ns, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')}={getattr(ns, key)} must be at least 1")
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


def bench(configs: Sequence[Config], overrides: Sequence[str], opts) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from qkvlab.bench.peaks import device_peak
    from qkvlab.bench.run import bench_variants
    from qkvlab.train.device import pick_device, resolve_precision

    first = configs[0]
    device = pick_device(first.train.device)
    precision = resolve_precision(first.train.precision, device)
    peak, peak_source, device_name = device_peak(device, precision)
    rows = bench_variants(configs, opts, peak, lambda cfgs: tqdm(cfgs, desc="bench: training", unit="variant"))
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
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
                   "decode_tokens": opts.decode_tokens, "statistic": "median"},
        "variants": rows,
    }


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(report: dict[str, Any]) -> str:
    contexts = list(report["variants"][0]["inference"])
    head = ["variant", "params", "GFLOP/tok", "step ms", "tok/s", "MFU %", "peak MB", "loop +%", "KV B/tok", "closed", "vs mha"]
    head += [f"prefill@{c}" for c in contexts] + [f"decode@{c}" for c in contexts]
    rows = []
    for r in report["variants"]:
        rows.append([
            r["variant"], f"{r['params/total']:,}", f"{r['train/flops_per_token'] / 1e9:.3f}",
            f"{1e3 * r['train/step_s']:.1f}", f"{r['train/tokens_per_s']:,.0f}", f"{100 * r['train/mfu']:.1f}",
            _num(r["train/peak_memory_bytes"] and r["train/peak_memory_bytes"] / 2**20, ".0f"),
            _num(r["loop/overhead"] and 100 * r["loop/overhead"], "+.1f"),
            f"{r['kv_cache/bytes_per_token']:,.0f}", f"{r['kv_cache/bytes_per_token_closed_form']:,}",
            f"{r['kv_cache/ratio_vs_mha']:.4f}",
            *(f"{r['inference'][c]['prefill_tokens_per_s']:,.0f}" for c in contexts),
            *(f"{r['inference'][c]['decode_tokens_per_s']:,.1f}" for c in contexts),
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    title = (
        f"qkvlab bench: model {report['model']} {report['shape']} on {report['device_name']} ({report['device']}, "
        f"{report['threads']} threads), {report['precision']}{', compiled' if report['compile'] else ''}, "
        f"batch {report['batch_size']} x {report['seq_len']}; peak {report['peak_flops'] / 1e9:,.1f} GFLOP/s "
        f"({report['peak_flops_source']}); medians of {report['timing']['repeats']} repeats"
    )
    return "\n".join([title, line(head), *(line(r) for r in rows)])


def bench_main(args: list[str]) -> None:
    from qkvlab.bench.noise import noise_warnings
    from qkvlab.bench.run import BenchOptions
    from qkvlab.files import write_json_atomic

    ns = parse_args(args)
    variants = [v.strip() for v in ns.variants.split(",") if v.strip()]
    if not variants:
        raise ConfigError("--variants is empty; e.g. --variants mha,k_eq_v")
    configs = [compose_config([*BASE_OVERRIDES, *ns.overrides, f"variant={v}"]) for v in variants]
    opts = BenchOptions(contexts=bench_contexts(ns.contexts, configs), steps=ns.steps, repeats=ns.repeats,
                        warmup=ns.warmup, decode_tokens=ns.decode_tokens, loop=not ns.no_loop)
    report = bench(configs, ns.overrides, opts)
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(ns.out or f"outputs/bench/bench_{report['model']}_{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    print(format_table(report), flush=True)
    print(f"  wrote {out}", flush=True)
    for line in noise_warnings(report):
        print(f"qkvlab: warning: {line}", file=sys.stderr, flush=True)
