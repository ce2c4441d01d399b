"""Benchmark the text pipeline: tokenizing a corpus into the token cache, and loading batches from it.

  python scripts/bench_tokenize.py [--corpus ../shared/data/tinyshakespeare.txt]

1. End to end into a fresh cache (load_dataset, a freshly trained BPE, tokenizing,
   writing shards), for the byte tokenizer and a 4k BPE: seconds and MB/s.
   Target: the 4k BPE under 10 s on 2 cores.
2. A batch from the token cache against one `model=small` training step on the
   CPU. Target: under 1%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def config(corpus: Path, *overrides: str):
    """The composed config, exactly as `qkvlab train data=text data.path=<corpus> ...` would see it."""
    from qkvlab.checks import compose_config

    return compose_config(["data=text", f"data.path={corpus}", "train.progress=false", "train.device=cpu", *overrides])


def bench_tokenize(corpus: Path, vocab: int) -> dict:
    from qkvlab.data.text import cache_request
    from qkvlab.data.token_cache import open_token_cache

    mb = corpus.stat().st_size / 1e6
    out = {"corpus_mb": round(mb, 3), "cpus": os.cpu_count()}
    for name, data in (("byte", ["data.tokenizer=byte"]), (f"bpe{vocab}", ["data.tokenizer=bpe", f"data.bpe_vocab_size={vocab}"])):
        d = config(corpus, *data).data
        with tempfile.TemporaryDirectory() as cache:
            os.environ["QKVLAB_CACHE"] = cache
            seconds, tokens = timed(lambda: open_token_cache(cache_request(d, progress=False)))
            again, _ = timed(lambda: open_token_cache(cache_request(d, progress=False)))
        out[name] = {
            "end_to_end_s": round(seconds, 3),
            "mb_per_s": round(mb / seconds, 3),
            "tokens": len(tokens),
            "tokens_per_s": round(len(tokens) / seconds),
            "bytes_per_token": round(corpus.stat().st_size / len(tokens), 3),
            "tokenize_only_mb_per_s": round(mb / tokens.meta["seconds"], 3),
            "cached_open_s": round(again, 4),
        }
    return out


def bench_batches(corpus: Path, vocab: int, batch_size: int, seq_len: int, steps: int) -> dict:
    import torch

    from qkvlab.train.loop import Trainer

    with tempfile.TemporaryDirectory() as cache:
        os.environ["QKVLAB_CACHE"] = cache
        cfg = config(corpus, "model=small", "data.tokenizer=bpe", f"data.bpe_vocab_size={vocab}", f"data.batch_size={batch_size}",
                     f"data.seq_len={seq_len}", "data.val_tokens=4096")
        trainer = Trainer(cfg, Path(cache) / "run")
        data = trainer.data
        load_s, _ = timed(lambda: [data.train_batch(s) for s in range(100)], repeat=3)
        load_s /= 100
        trainer.train_step(0)  # warm-up
        step_s, _ = timed(lambda: trainer.train_step(1), repeat=steps)
    return {
        "batch": f"{batch_size}x{seq_len}",
        "torch_threads": torch.get_num_threads(),
        "batch_load_ms": round(1000 * load_s, 3),
        "small_train_step_ms": round(1000 * step_s, 1),
        "load_over_step_percent": round(100 * load_s / step_s, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "data" / "tinyshakespeare.txt")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed model=small training steps (median)")
    args = parser.parse_args()
    if not args.corpus.exists():
        raise SystemExit(f"bench_tokenize: {args.corpus} does not exist; pass --corpus")
    start = time.perf_counter()
    import datasets  # noqa: F401  (import cost is not tokenizing cost)
    import torch  # noqa: F401

    result = {"import_s": round(time.perf_counter() - start, 2)}
    result["tokenize"] = bench_tokenize(args.corpus, args.vocab)
    result["batches"] = bench_batches(args.corpus, args.vocab, args.batch_size, args.seq_len, args.steps)
    t, b = result["tokenize"], result["batches"]
    bpe = t[f"bpe{args.vocab}"]
    print(json.dumps(result, indent=1))
    print(
        f"\n{args.corpus.name} ({t['corpus_mb']} MB, {t['cpus']} CPUs): "
        f"byte {t['byte']['end_to_end_s']} s end to end ({t['byte']['mb_per_s']} MB/s), "
        f"{args.vocab} BPE trained and applied in {bpe['end_to_end_s']} s ({bpe['mb_per_s']} MB/s end to end, "
        f"{bpe['tokenize_only_mb_per_s']} MB/s tokenizing) [target < 10 s: {'ok' if bpe['end_to_end_s'] < 10 else 'MISSED'}]\n"
        f"batch {b['batch']} from the cache: {b['batch_load_ms']} ms vs a model=small CPU step {b['small_train_step_ms']} ms "
        f"= {b['load_over_step_percent']}% [target < 1%: {'ok' if b['load_over_step_percent'] < 1 else 'MISSED'}]"
    )


if __name__ == "__main__":
    main()
