from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qkvlab.data.cache import build_once, is_complete
from qkvlab.data.text import cache_request
from qkvlab.data.token_cache import TokenCache, open_token_cache, token_dtype, tokenize_into
from qkvlab.data.tokenizer import ByteTokenizer

REPO = Path(__file__).resolve().parents[2]


def test_dtype_follows_vocabulary():
    assert token_dtype(257) == np.uint16 and token_dtype(50257) == np.uint16
    assert token_dtype(1 << 16) == np.uint32 and token_dtype(100_000) == np.uint32


def test_second_open_does_not_tokenize_again(tmp_path, make_docs, write_jsonl, text_config):
    cfg = text_config(write_jsonl(tmp_path / "c.jsonl", make_docs(40)), tokenizer="bpe", bpe_vocab_size=300)
    first = open_token_cache(cache_request(cfg.data, progress=False))
    req = cache_request(cfg.data, progress=False)
    req.documents = req.tokenizer = lambda: pytest.fail("the cache was built again")
    again = open_token_cache(req)
    assert again.path == first.path and np.array_equal(again.read(0, len(again)), first.read(0, len(first)))
    assert first.meta["dtype"] == "uint16" and first.vocab_size == 300
    # The stored tokenizer decodes the cache with no retraining.
    assert again.tokenizer().decode(again.read(0, 20)).startswith("doc0000 ")


def test_changed_file_or_settings_get_a_new_entry(tmp_path, make_docs, write_jsonl, text_config):
    path = write_jsonl(tmp_path / "c.jsonl", make_docs(40))
    a = cache_request(text_config(path).data).path
    assert cache_request(text_config(path, max_tokens=5000).data).path != a
    assert cache_request(text_config(path, tokenizer="bpe").data).path != a
    assert cache_request(text_config(path, val_tokens=300, seq_len=32).data).path == a  # windowing is not tokenizing
    write_jsonl(path, make_docs(41))
    assert cache_request(text_config(path).data).path != a


def test_shards_read_as_one_stream_and_max_tokens_is_exact(tmp_path):
    docs = [f"document number {i}\n" for i in range(30)]
    tok = ByteTokenizer()
    stats = tokenize_into(tmp_path, iter(docs), tok, max_tokens=500, num_proc=1, total_bytes=None, desc="t", progress=False, shard_tokens=64)
    assert stats["n_tokens"] == 500 and len(stats["shards"]) == 8
    from qkvlab.data.cache import write_meta

    from qkvlab.data.integrity import shard_sums

    crcs, stream, top = shard_sums(tmp_path, stats["shards"], np.dtype(np.uint16))
    shards = [{**s, "crc32": c} for s, c in zip(stats["shards"], crcs)]
    write_meta(tmp_path, {**stats, "shards": shards, "dtype": "uint16", "vocab_size": 257, "eot": 256,
                          "checksum": f"{stream:08x}", "max_id": top})
    cache = TokenCache(tmp_path)
    expected = np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8), 256) for d in docs])[:500]
    assert np.array_equal(cache.read(0, 500), expected)
    assert np.array_equal(cache.read(60, 200), expected[60:200])  # crosses three shard boundaries


def test_parallel_workers_give_the_same_tokens(tmp_path):
    docs = ["x" * 5000 + f" {i}\n" for i in range(400)]
    stats = {}
    for name, procs in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        stats[name] = tokenize_into(tmp_path / name, iter(docs), ByteTokenizer(), max_tokens=None, num_proc=procs, total_bytes=None, desc=name, progress=False)
    one, two = stats["a"], stats["b"]
    assert one["n_tokens"] == two["n_tokens"] == sum(len(d) + 1 for d in docs)
    assert (tmp_path / "a" / "shard_00000.bin").read_bytes() == (tmp_path / "b" / "shard_00000.bin").read_bytes()


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    target = tmp_path / "entry"

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_once(target, broken, "test")
    assert not target.exists() and not list(tmp_path.glob(".entry.tmp-*"))
    from qkvlab.data.cache import write_meta

    build_once(target, lambda tmp: write_meta(tmp, {"ok": 1}), "test")
    assert is_complete(target)


BUILDER = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    from qkvlab.config import DataConfig
    from qkvlab.data.text import cache_request
    from qkvlab.data.token_cache import open_token_cache

    d = DataConfig(name="t", task="text", causal=True, path=sys.argv[1], tokenizer="bpe", bpe_vocab_size=300)
    req = cache_request(d, progress=False)
    docs = req.documents

    def slow_docs():
        for text in docs():
            time.sleep(0.02)  # keep the build open long enough for the other job to arrive
            yield text

    req.documents = slow_docs
    cache = open_token_cache(req)
    data = cache.read(0, len(cache))
    print(json.dumps({"pid": os.getpid(), "built_by": cache.meta["built_by_pid"], "n": len(cache),
                      "sha": hashlib.sha256(data.tobytes()).hexdigest()}))
    """
)


@pytest.mark.slow
def test_two_processes_build_one_cache(tmp_path, make_docs, write_jsonl):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(100))
    env = {**os.environ, "QKVLAB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(corpus)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert results[0]["sha"] == results[1]["sha"] and results[0]["n"] == results[1]["n"] > 0
    assert results[0]["built_by"] == results[1]["built_by"] in {r["pid"] for r in results}
    assert sum("tokenized" in o[1] for o in outs) == 1
    assert any("waiting for it" in o[1] for o in outs)
    entries = sorted(e.name for e in (tmp_path / "cache" / "tokens").iterdir())
    assert len(entries) == 2 and entries[1] == entries[0] + ".lock"  # one entry, no temporary left


def test_a_cached_hub_corpus_needs_neither_network_nor_source(tmp_path, make_docs, write_jsonl, monkeypatch):
    """Once tokenized, a run opens the cache without calling load_dataset (a local folder stands in for the hub)."""
    import shutil

    import datasets

    from qkvlab.config import DataConfig

    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "train.jsonl", make_docs(30))
    d = DataConfig(name="x", task="text", causal=True, hub=str(tmp_path / "ds"), tokenizer="bpe", bpe_vocab_size=300)
    built = open_token_cache(cache_request(d, progress=False))
    shutil.rmtree(tmp_path / "ds")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the corpus was read again"))
    again = open_token_cache(cache_request(d, progress=False))
    assert again.path == built.path and len(again) == len(built)
