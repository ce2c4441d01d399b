"""The token cache: a corpus tokenized once into memory-mapped shards that every run reuses.

Layout of one entry (`$QKVLAB_CACHE/tokens/<corpus>-<hash>/`): `shard_00000.bin`, ...
(raw uint16 ids when the vocabulary fits, else uint32), `tokenizer.json` for
hub/BPE tokenizers, and `meta.json`, written last, which marks it complete.
Documents are packed back to back, each followed by the end-of-text id.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from qkvlab.data.cache import build_once, cache_root, entry_name, write_meta
from qkvlab.data.corpus import split_document
from qkvlab.data.integrity import check_token_entry, file_crc, read_meta, shard_sums
from qkvlab.data.tokenizer import TextTokenizer, from_spec

# 2: meta.json records checksums (qkvlab/data/integrity.py).
CACHE_FORMAT = 2
META_KEYS = ("dtype", "shards", "n_tokens", "vocab_size", "eot", "checksum", "max_id")
SHARD_TOKENS = 1 << 28
# Characters handed to one tokenizer job.
JOB_CHARS = 1 << 20
# Corpora smaller than this are tokenized in-process: starting workers costs more than it saves.
PARALLEL_MIN_BYTES = 64 << 20


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < (1 << 16) else np.uint32)


class TokenCache:
    """A read-only view of one complete entry as one long token array; a damaged entry
    raises DamagedCache (a ConfigError naming it) instead of opening."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = read_meta(self.path, "token cache", META_KEYS)
        check_token_entry(self.path, self.meta)
        dtype = np.dtype(self.meta["dtype"])
        self.shards = [np.memmap(self.path / s["file"], dtype=dtype, mode="r", shape=(s["tokens"],)) for s in self.meta["shards"]]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.n_tokens = int(self.starts[-1])
        self.vocab_size = int(self.meta["vocab_size"])
        self.eot = int(self.meta["eot"])

    def __len__(self) -> int:
        return self.n_tokens

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int64, across shard boundaries."""
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"token range [{start}, {stop}) is outside the cache's {self.n_tokens} tokens")
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        while start < stop:
            shard, base = self.shards[i], int(self.starts[i])
            end = min(stop, base + len(shard))
            parts.append(shard[start - base : end - base])
            start, i = end, i + 1
        return np.concatenate(parts).astype(np.int64) if len(parts) != 1 else parts[0].astype(np.int64)

    @property
    def identity(self) -> dict[str, Any]:
        """What a run records of its data: the entry, and a checksum of its tokens (the same tokens, the same data)."""
        return {"entry": self.path.name, "checksum": self.meta["checksum"], "tokens": self.n_tokens}

    def tokenizer(self) -> TextTokenizer:
        """The tokenizer that made this cache (no download: it is stored beside the shards)."""
        path = self.path / "tokenizer.json"
        return from_spec(("hf", path.read_text()) if path.exists() else ("byte", ""))


class _ShardWriter:
    def __init__(self, root: Path, dtype: np.dtype, shard_tokens: int):
        self.root, self.dtype, self.shard_tokens = root, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.n = 0
        self._file = None

    def add(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        while len(ids):
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            self._file.write(part.astype(self.dtype, copy=False).tobytes())
            self.shards[-1]["tokens"] += len(part)
            self.n += len(part)

    def _open(self) -> None:
        self._close_file()
        name = f"shard_{len(self.shards):05d}.bin"
        self._file = open(self.root / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (a corpus capped by data.max_tokens)."""
        self._close_file()
        while self.n > n:
            last = self.shards[-1]
            drop = min(self.n - n, last["tokens"])
            last["tokens"] -= drop
            self.n -= drop
            os.truncate(self.root / last["file"], last["tokens"] * self.dtype.itemsize)
            if last["tokens"] == 0:
                os.remove(self.root / last["file"])
                self.shards.pop()

    def close(self) -> list[dict[str, Any]]:
        self._close_file()
        return self.shards


# One (pieces, ends) job: pieces of documents, and whether each piece ends its document.
Job = tuple[list[str], list[bool]]

_worker_tokenizer: TextTokenizer | None = None


def _init_worker(spec: tuple[str, str]) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _worker_tokenizer = from_spec(spec)


def _encode(job: Job, tokenizer: TextTokenizer | None = None) -> tuple[list[np.ndarray], list[bool], int]:
    pieces, ends = job
    tok = tokenizer or _worker_tokenizer
    return tok.encode_batch(pieces), ends, sum(len(p.encode("utf-8", errors="replace")) for p in pieces)


def _jobs(docs: Iterator[str]) -> Iterator[Job]:
    pieces: list[str] = []
    ends: list[bool] = []
    size = 0
    for text in docs:
        parts = split_document(text)
        for k, part in enumerate(parts):
            pieces.append(part)
            ends.append(k == len(parts) - 1)
            size += len(part)
            if size >= JOB_CHARS:
                yield pieces, ends
                pieces, ends, size = [], [], 0
    if pieces:
        yield pieces, ends


def _encoded(jobs: Iterator[Job], tokenizer: TextTokenizer, num_proc: int):
    """Encoded jobs in corpus order; at most 2 jobs per worker in flight, so memory stays bounded."""
    if num_proc <= 1:
        for job in jobs:
            yield _encode(job, tokenizer)
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(num_proc, initializer=_init_worker, initargs=(tokenizer.spec(),)) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.apply_async(_encode, (job,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def resolve_num_proc(num_proc: int | None, known_bytes: int | None) -> int:
    if num_proc is not None:
        return num_proc
    if known_bytes is not None and known_bytes < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def tokenize_into(
    root: Path,
    docs: Iterator[str],
    tokenizer: TextTokenizer,
    *,
    max_tokens: int | None,
    num_proc: int,
    total_bytes: int | None,
    desc: str,
    progress: bool,
    shard_tokens: int = SHARD_TOKENS,
) -> dict[str, Any]:
    """Tokenize `docs` into shards under `root`; returns the figures for meta.json."""
    writer = _ShardWriter(root, token_dtype(tokenizer.vocab_size), shard_tokens)
    eot = np.array([tokenizer.eot])
    n_bytes = 0
    start = time.perf_counter()
    # The bar's rate is the average since the start (smoothing=0) in MB of 10^6 bytes of text, as the summary's.
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, smoothing=0,
               desc=f"tokenizing {desc}", disable=not progress, dynamic_ncols=True)
    try:
        for ids, ends, nb in _encoded(_jobs(docs), tokenizer, num_proc):
            for arr, end in zip(ids, ends):
                writer.add(arr)
                if end:
                    writer.add(eot)
            n_bytes += nb
            bar.update(nb)
            bar.set_postfix(tokens=f"{writer.n:,}", tok_s=f"{writer.n / max(time.perf_counter() - start, 1e-9):,.0f}", refresh=False)
            if max_tokens is not None and writer.n >= max_tokens:
                break
    finally:
        bar.close()
        close = getattr(docs, "close", None)
        if close is not None:
            close()
    if max_tokens is not None:
        writer.truncate(max_tokens)
    shards = writer.close()
    return {"shards": shards, "n_tokens": writer.n, "bytes": n_bytes, "seconds": time.perf_counter() - start}


@dataclass
class CacheRequest:
    """Everything the cache needs to find or build one entry."""

    label: str
    identity: dict[str, Any]
    tokenizer: Callable[[], TextTokenizer]
    documents: Callable[[], Iterator[str]]
    max_tokens: int | None = None
    num_proc: int | None = None
    total_bytes: int | None = None
    progress: bool = True
    # A complete entry found by other means (qkvlab/data/offline.py): used as it is.
    entry: Path | None = None

    @property
    def path(self) -> Path:
        if self.entry is not None:
            return self.entry
        return cache_root() / "tokens" / entry_name(self.label, {**self.identity, "format": CACHE_FORMAT, "max_tokens": self.max_tokens})


def open_token_cache(req: CacheRequest) -> TokenCache:
    """The entry for `req`, tokenizing the corpus only if no complete entry exists yet."""
    path = req.path

    def build(tmp: Path) -> None:
        sums: dict[str, Any] = {}
        docs = req.documents()  # the corpus first: a missing corpus is the error to report
        tok = req.tokenizer()
        kind, payload = tok.spec()
        if kind != "byte":
            (tmp / "tokenizer.json").write_text(payload)
            sums["tokenizer_crc32"] = file_crc(tmp / "tokenizer.json")
        stats = tokenize_into(
            tmp,
            docs,
            tok,
            max_tokens=req.max_tokens,
            num_proc=resolve_num_proc(req.num_proc, req.total_bytes),
            total_bytes=req.total_bytes,
            desc=req.label,
            progress=req.progress,
        )
        if stats["n_tokens"] == 0:
            from qkvlab.errors import ConfigError

            raise ConfigError(f"the corpus {req.label} has no text after reading it; check data.path / data.hub and data.text_field")
        dtype = token_dtype(tok.vocab_size)
        crcs, stream, top = shard_sums(tmp, stats["shards"], dtype)
        for shard, crc in zip(stats["shards"], crcs):
            shard["crc32"] = crc
        sums.update(checksum=f"{stream:08x}", max_id=top)
        mb = stats["bytes"] / 1e6
        print(
            f"qkvlab: tokenized {req.label}: {mb:.1f} MB -> {stats['n_tokens']:,} tokens in {stats['seconds']:.1f}s "
            f"({mb / max(stats['seconds'], 1e-9):.2f} MB/s of text, {stats['n_tokens'] / max(stats['seconds'], 1e-9):,.0f} tokens/s, "
            f"averaged over the whole build); cache {path}",
            file=sys.stderr,
            flush=True,
        )
        write_meta(
            tmp,
            {
                **stats,
                **sums,
                "format": CACHE_FORMAT,
                "identity": req.identity,
                "label": req.label,
                "max_tokens": req.max_tokens,
                "dtype": dtype.name,
                "vocab_size": tok.vocab_size,
                "eot": tok.eot,
                "built_by_pid": os.getpid(),
            },
        )

    build_once(path, build, "token cache")
    return TokenCache(path)
