"""One variant's costs, measured in this process.

Training: the bare model step (`Trainer.update` on a batch already on the
device) against the full `Trainer.fit` loop (data, logging, progress bar,
metrics), timed in alternating blocks, round-robin over the variants, so
machine noise hits all alike.
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
from qkvlab.model import build_model, kv_cache_bytes_per_token, kv_decode
from qkvlab.model.attention import AttentionSpec, LayerInfo, SharedQKVAttention
from qkvlab.model.kv_cache import KVCache, LayerKVCache
from qkvlab.model.decode_step import step_for
from qkvlab.track.metrics import MetricsWriter
from qkvlab.train.device import compute_dtype, inference_model
from qkvlab.train.distributed import SINGLE, World
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


def _bench_cfg(cfg: Config, opts: BenchOptions) -> Config:
    # fit() validates once, at its end, outside the timed span; one batch keeps that wait short.
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, steps=opts.steps, eval_every=opts.steps),
        data=dataclasses.replace(cfg.data, val_size=min(cfg.data.val_size, cfg.data.batch_size)),
    )


def _step_fn(trainer: Trainer):
    dev = trainer.device
    batches = [
        tuple(t.to(dev) for t in trainer.world.shard(trainer.data.train_batch(0, micro)))
        for micro in range(trainer.cfg.train.grad_accum)
    ]
    return lambda: trainer.update(batches)


def _first_step_and_peak(cfg: Config, opts: BenchOptions, tmp: Path, world: World) -> tuple[float, int | None]:
    """One variant alone in the process, so the first step (allocation, compilation) and the peak memory are its own."""
    trainer = Trainer(cfg, tmp, world)
    step = _step_fn(trainer)
    t = time.perf_counter()
    step()
    synchronize(trainer.device)
    first_step_s = time.perf_counter() - t
    for _ in range(opts.warmup):
        step()
    peak, _ = peak_memory(step, trainer.device)
    return first_step_s, peak


def bench_training(
    cfgs: list[Config], opts: BenchOptions, progress, world: World = SINGLE
) -> tuple[list[dict[str, Any]], list[Trainer]]:
    """Training costs of every variant. The first step and peak memory are taken one variant at a time;
    the timed blocks then run round-robin (block r of every variant before block r + 1 of any), so drift
    in a shared machine's speed hits all variants alike, as inference's timings do. Under torchrun every
    rank steps its slice of the global batch (DDP), and tokens/s is the job's; peak memory is rank 0's."""
    cfgs = [_bench_cfg(cfg, opts) for cfg in cfgs]
    with tempfile.TemporaryDirectory(prefix="qkvlab-bench-") as tmp:
        firsts = [_first_step_and_peak(cfg, opts, Path(tmp) / f"first{i}", world) for i, cfg in enumerate(progress(cfgs))]
        trainers = [Trainer(cfg, Path(tmp) / f"v{i}", world) for i, cfg in enumerate(cfgs)]
        steps = [_step_fn(trainer) for trainer in trainers]
        for step in steps:
            for _ in range(max(1, opts.warmup)):
                step()
        bare: list[list[float]] = [[] for _ in trainers]
        loop: list[list[float]] = [[] for _ in trainers]
        for r in range(opts.repeats):
            for i, (trainer, step) in enumerate(zip(trainers, steps)):
                dev = trainer.device
                bare[i].append(median_seconds(lambda: [step() for _ in range(opts.steps)], dev, repeats=1, warmup=0))
                if opts.loop:
                    trainer.run_dir, trainer.state, trainer.last_checkpoint = Path(tmp) / f"loop{i}_{r}", LoopState(), None
                    writer = MetricsWriter(trainer.run_dir)
                    result = trainer.fit(writer)
                    writer.close()
                    loop[i].append(opts.steps * trainer.tokens_per_step / result["throughput/tokens_per_s"])
    rows = []
    for trainer, (first_step_s, peak), b, lp in zip(trainers, firsts, bare, loop):
        step_s = statistics.median(b) / opts.steps
        tokens_per_s = trainer.tokens_per_step / step_s
        flops = trainer.info.stats["compute/flops_per_token"]
        loop_step_s = statistics.median(lp) / opts.steps if lp else None
        rows.append({
            "train/first_step_s": first_step_s,
            "train/step_s": step_s,
            "train/tokens_per_s": tokens_per_s,
            "train/tokens_per_s_per_device": tokens_per_s / world.size,
            "train/flops_per_token": flops,
            "train/peak_memory_bytes": peak,
            "loop/step_s": loop_step_s,
            "loop/tokens_per_s": trainer.tokens_per_step / loop_step_s if loop_step_s else None,
            # From the fastest blocks: contention on a shared machine only ever adds time.
            "loop/overhead": min(lp) / min(b) - 1 if lp else None,
            "tokens_per_step": trainer.tokens_per_step,
            "params/matmul": trainer.info.stats["params/matmul"],
            # How far the timed blocks spread, (max - min) / median (qkvlab/bench/noise.py); None for one repeat.
            "noise": {
                "step ms": spread(b),
                "loop/overhead": max(spread(b), spread(lp)) if len(lp) > 1 else None,
            },
        })
    return rows, trainers


def mha_layer_cache(spec: AttentionSpec, max_len: int, device, dtype) -> LayerKVCache:
    """One layer's cache as `mha` of the same shape allocates it: the reference bench measures against."""
    with torch.device("meta"):
        twin = SharedQKVAttention(spec.mha_twin(), LayerInfo(0, 1))
    return LayerKVCache(twin.cache_shapes(1, max_len), max_len, device, dtype)


def weight_bytes_read(model: torch.nn.Module) -> int:
    """Bytes of weights one decoded token reads: every parameter once (tied ones once), except that an
    untied embedding table (and a learned position table) gives one row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    tables = [model.pos_emb] if model.pos_emb is not None else []
    if not model.cfg.tie_embeddings and isinstance(model.tok_emb, torch.nn.Embedding):
        tables.append(model.tok_emb)
    for table in tables:
        w = table.weight
        total -= (w.shape[0] - 1) * w.shape[1] * w.element_size()
    return total


def decode_path(model, cache: KVCache) -> str:
    """How one-token decoding attends, for the table: a fused kernel (over the one cached S, or over K
    and V on a CPU), SDPA over K and V, or PyTorch's rotate-then-SDPA over S; a family's own path otherwise.
    `step:cpu` is the CPU kernel inside the whole-token C step (decode_step.py)."""
    if step_for(model, cache) is not None:
        return "step:cpu"
    paths = []
    for block, layer in zip(model.blocks, cache.layers):
        attn = block.attn
        if not isinstance(attn, SharedQKVAttention) or type(attn).forward_cached is not SharedQKVAttention.forward_cached:
            name = "family"
        elif attn.reuses or not layer.buffers:
            continue
        elif attn.fused_decode(layer):
            name = "kernel:" + kv_decode.kernel_for(layer.buffers[0].device, layer.dtype, attn.spec.n_heads, attn.spec.n_kv_heads, attn.spec.d_head)
        elif attn.spec.cached_tensors == 2:
            name = "sdpa"
        else:
            name = "pytorch"
        if name not in paths:
            paths.append(name)
    return "+".join(paths) or "-"


@torch.no_grad()
def bench_inference(cfgs: list[Config], vocab: int, device: torch.device, precision: str, opts: BenchOptions) -> list[dict[str, Any]]:
    """Prefill and decode speeds of every variant, timed round-robin: repeat r of each
    variant runs next to repeat r of the others, so drift in a shared machine's speed
    (minutes apart, it moves by 10-20% on a small VM) hits all variants alike. Models are
    cast once to the inference dtype, as eval and generate run them."""
    models = []
    for cfg in cfgs:
        causal = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, causal=True))
        checked(causal)
        models.append(inference_model(build_model(causal, vocab).to(device), precision))
    dtype = compute_dtype(precision)
    context = min(cfg.model.context for cfg in cfgs)
    contexts = [c for c in opts.contexts if c <= context] or [context]
    gen = torch.Generator(device="cpu").manual_seed(0)
    speeds: list[dict[str, dict[str, float]]] = [{} for _ in models]
    noises: list[dict[str, float | None]] = [{} for _ in models]
    paths = [""] * len(models)
    for L in contexts:
        prompt = torch.randint(0, vocab, (1, L), generator=gen).to(device)
        n = min(opts.decode_tokens, L - 1)
        timers = []
        for i, model in enumerate(models):
            cache = KVCache(model, 1, L, dtype)
            model(prompt[:, : L - n], cache, 0)
            paths[i] = decode_path(model, cache)

            def prefill(model=model) -> None:
                model(prompt, KVCache(model, 1, L, dtype), 0)

            def decode(model=model, cache=cache) -> None:
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
        for model, out, noise, (tp, td) in zip(models, speeds, noises, times):
            per_token = statistics.median(td) / n
            # The decoded tokens attend over L - n + 1 .. L cached positions: their mean.
            read = weight_bytes_read(model) + KVCache(model, 1, 1, dtype).nbytes * (L - (n - 1) / 2)
            out[str(L)] = {
                "prefill_tokens_per_s": L / statistics.median(tp),
                "decode_tokens_per_s": 1 / per_token,
                "decode_bytes_per_token": read,
                "decode_gb_per_s": read / per_token / 1e9,
            }
            noise.update({f"prefill@{L}": spread(tp), f"decode@{L}": spread(td)})
    L = contexts[-1]
    rows = []
    for model, speed, noise, path in zip(models, speeds, noises, paths):
        measured = KVCache(model, 1, L, dtype).bytes_per_token()
        mha = len(model.blocks) * mha_layer_cache(model.spec, L, device, dtype).nbytes / L
        rows.append({
            "kv_cache/bytes_per_token": measured,
            "kv_cache/bytes_per_token_closed_form": kv_cache_bytes_per_token(model, dtype),
            "kv_cache/ratio_vs_mha": measured / mha,
            "decode/path": path,
            "inference": speed,
            "noise": noise,
        })
    return rows


def bench_variants(
    cfgs: list[Config], opts: BenchOptions, progress, names: list[str] | None = None, world: World = SINGLE
) -> list[dict[str, Any]] | None:
    """Training costs of every variant (timed round-robin), then inference for all variants together,
    which is one device's work: under torchrun rank 0 times it while the others wait, and only rank 0
    returns the rows."""
    train, trainers = bench_training(cfgs, opts, progress, world)
    if not world.is_main:
        world.barrier()
        return None
    rows = []
    for cfg, trainer, row, name in zip(cfgs, trainers, train, names or [cfg.variant.name for cfg in cfgs]):
        rows.append({
            "variant": name,
            "sharing": cfg.variant.sharing,
            "n_kv_heads": trainer.spec.n_kv_heads,
            **{k: trainer.info.stats[k] for k in ("params/total", "params/attention")},
            **row,
        })
    first = trainers[0]
    infer = bench_inference(cfgs, first.info.vocab_size, first.device, first.precision, opts)
    world.barrier()
    return [{**row, **inf, "noise": {**row["noise"], **inf["noise"]}} for row, inf in zip(rows, infer)]
