"""One variant's costs, measured in this process.

Training: the bare model step (`Trainer.update` on a batch already on the
device) against the full `Trainer.fit` loop (data, logging, progress bar,
metrics), timed in alternating blocks so machine noise hits both alike.
Inference: prefill and one-token decode through the KV cache at several
context lengths, on a causal twin of the model (same shape, same speed),
all variants timed round-robin.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qkvlab.bench.measure import median_seconds, peak_memory, synchronize
from qkvlab.bench.noise import spread
from qkvlab.checks import checked
from qkvlab.config import Config
from qkvlab.model import build_model, kv_cache_bytes_per_token
from qkvlab.model.attention import AttentionSpec, LayerInfo, SharedQKVAttention
from qkvlab.model.kv_cache import KVCache, LayerKVCache
from qkvlab.track.metrics import MetricsWriter
from qkvlab.train.device import autocast, compute_dtype
from qkvlab.train.loop import LoopState, Trainer


@dataclass(frozen=True)
class BenchOptions:
    contexts: tuple[int, ...] = (512, 1024, 2048)
    # Optimizer steps per timed block; blocks are repeated `repeats` times.
    steps: int = 10
    repeats: int = 3
    warmup: int = 2
    decode_tokens: int = 32
    loop: bool = True


def bench_training(cfg: Config, opts: BenchOptions, peak_flops: float) -> tuple[dict[str, Any], Trainer]:
    # fit() validates once, at its end, outside the timed span; one batch keeps that wait short.
    cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, steps=opts.steps, eval_every=opts.steps),
        data=dataclasses.replace(cfg.data, val_size=min(cfg.data.val_size, cfg.data.batch_size)),
    )
    with tempfile.TemporaryDirectory(prefix="qkvlab-bench-") as tmp:
        trainer = Trainer(cfg, Path(tmp))
        dev = trainer.device
        batches = [
            tuple(t.to(dev) for t in trainer.data.train_batch(0, micro)) for micro in range(cfg.train.grad_accum)
        ]

        def step() -> None:
            trainer.update(batches)

        t = time.perf_counter()
        step()
        synchronize(dev)
        first_step_s = time.perf_counter() - t
        for _ in range(opts.warmup):
            step()
        peak, _ = peak_memory(step, dev)
        bare, loop = [], []
        for r in range(opts.repeats):
            bare.append(median_seconds(lambda: [step() for _ in range(opts.steps)], dev, repeats=1, warmup=0))
            if opts.loop:
                trainer.run_dir, trainer.state, trainer.last_checkpoint = Path(tmp) / f"loop{r}", LoopState(), None
                writer = MetricsWriter(trainer.run_dir)
                result = trainer.fit(writer)
                writer.close()
                loop.append(opts.steps * trainer.tokens_per_step / result["throughput/tokens_per_s"])
    step_s = statistics.median(bare) / opts.steps
    tokens_per_s = trainer.tokens_per_step / step_s
    flops = trainer.info.stats["compute/flops_per_token"]
    loop_step_s = statistics.median(loop) / opts.steps if loop else None
    return {
        "train/first_step_s": first_step_s,
        "train/step_s": step_s,
        "train/tokens_per_s": tokens_per_s,
        "train/flops_per_token": flops,
        "train/mfu": flops * tokens_per_s / peak_flops,
        "train/peak_memory_bytes": peak,
        "loop/step_s": loop_step_s,
        "loop/tokens_per_s": trainer.tokens_per_step / loop_step_s if loop_step_s else None,
        # From the fastest blocks: contention on a shared machine only ever adds time.
        "loop/overhead": min(loop) / min(bare) - 1 if loop else None,
        "tokens_per_step": trainer.tokens_per_step,
        "params/matmul": trainer.info.stats["params/matmul"],
        # How far the timed blocks spread, (max - min) / median (qkvlab/bench/noise.py); None for one repeat.
        "noise": {
            "step ms": spread(bare),
            "loop/overhead": max(spread(bare), spread(loop)) if len(loop) > 1 else None,
        },
    }, trainer


def mha_layer_cache(spec: AttentionSpec, max_len: int, device, dtype) -> LayerKVCache:
    """One layer's cache as `mha` of the same shape allocates it: the reference bench measures against."""
    with torch.device("meta"):
        twin = SharedQKVAttention(spec.mha_twin(), LayerInfo(0, 1))
    return LayerKVCache(twin.cache_shapes(1, max_len), max_len, device, dtype)


@torch.no_grad()
def bench_inference(cfgs: list[Config], vocab: int, device: torch.device, precision: str, opts: BenchOptions) -> list[dict[str, Any]]:
    """Prefill and decode speeds of every variant, timed round-robin: repeat r of each
    variant runs next to repeat r of the others, so drift in a shared machine's speed
    (minutes apart, it moves by 10-20% on a small VM) hits all variants alike."""
    models = []
    for cfg in cfgs:
        causal = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, causal=True))
        checked(causal)
        models.append(build_model(causal, vocab).to(device).eval())
    dtype, amp = compute_dtype(precision), autocast(device, precision)
    context = min(cfg.model.context for cfg in cfgs)
    contexts = [c for c in opts.contexts if c <= context] or [context]
    gen = torch.Generator(device="cpu").manual_seed(0)
    speeds: list[dict[str, dict[str, float]]] = [{} for _ in models]
    noises: list[dict[str, float | None]] = [{} for _ in models]
    for L in contexts:
        prompt = torch.randint(0, vocab, (1, L), generator=gen).to(device)
        n = min(opts.decode_tokens, L - 1)
        timers = []
        for model in models:
            cache = KVCache(model, 1, L, dtype)
            with amp:
                model(prompt[:, : L - n], cache, 0)

            def prefill(model=model) -> None:
                with amp:
                    model(prompt, KVCache(model, 1, L, dtype), 0)

            def decode(model=model, cache=cache) -> None:
                with amp:
                    for i in range(n):
                        model(prompt[:, L - n + i : L - n + i + 1], cache, L - n + i)

            timers.append((prefill, decode))
        times = [([], []) for _ in models]
        for r in range(1 + opts.repeats):
            for (prefill, decode), (tp, td) in zip(timers, times):
                p_s = median_seconds(prefill, device, 1, warmup=0)
                d_s = median_seconds(decode, device, 1, warmup=0)
                if r:  # the first round warms up
                    tp.append(p_s)
                    td.append(d_s)
        for out, noise, (tp, td) in zip(speeds, noises, times):
            out[str(L)] = {
                "prefill_tokens_per_s": L / statistics.median(tp),
                "decode_tokens_per_s": n / statistics.median(td),
            }
            noise.update({f"prefill@{L}": spread(tp), f"decode@{L}": spread(td)})
    L = contexts[-1]
    rows = []
    for model, speed, noise in zip(models, speeds, noises):
        measured = KVCache(model, 1, L, dtype).bytes_per_token()
        mha = len(model.blocks) * mha_layer_cache(model.spec, L, device, dtype).nbytes / L
        rows.append({
            "kv_cache/bytes_per_token": measured,
            "kv_cache/bytes_per_token_closed_form": kv_cache_bytes_per_token(model, dtype),
            "kv_cache/ratio_vs_mha": measured / mha,
            "inference": speed,
            "noise": noise,
        })
    return rows


def bench_variants(cfgs: list[Config], opts: BenchOptions, peak_flops: float, progress) -> list[dict[str, Any]]:
    """Training costs one variant at a time (each step is long enough to time alone),
    then inference for all variants together."""
    rows, trainer = [], None
    for cfg in progress(cfgs):
        train, trainer = bench_training(cfg, opts, peak_flops)
        rows.append({
            "variant": cfg.variant.name,
            "sharing": cfg.variant.sharing,
            "n_kv_heads": trainer.spec.n_kv_heads,
            **{k: trainer.info.stats[k] for k in ("params/total", "params/attention")},
            **train,
        })
    infer = bench_inference(cfgs, trainer.info.vocab_size, trainer.device, trainer.precision, opts)
    return [{**row, **inf, "noise": {**row["noise"], **inf["noise"]}} for row, inf in zip(rows, infer)]
