"""Language modelling on a real corpus, read from the token cache.

The token stream (documents packed with end-of-text between them) is split
into two disjoint regions before any window is cut: training windows come
only from the head, validation only from the tail. The tail starts at a
document boundary when one lies within `val_tokens` of the cut, so no
document is shared (a one-document corpus, such as one .txt file, is cut
mid-text). Validation is the first `val_tokens` targets of the tail, so it is
the same tokens for every variant and every seed (with `data.val_path`, those of
a separate file, qkvlab/data/heldout.py, and the whole stream trains); training windows start at
positions drawn from (seed, step, micro-step) alone, so a resumed run and
every variant with that seed see the same data.
"""

from __future__ import annotations

import sys
from typing import Iterator

import numpy as np
import torch

from qkvlab.config import Config, DataConfig
from qkvlab.errors import ConfigError
from qkvlab.data import corpus, heldout, offline, tokenizer
from qkvlab.data.source import IGNORE, Batch
from qkvlab.data.token_cache import CACHE_FORMAT, CacheRequest, TokenCache, open_token_cache

_TRAIN_STREAM = 0
_SAID: set[str] = set()


def check_text(d: DataConfig) -> None:
    corpus.check_corpus(d, files_needed=not (offline.path_missing(d) and offline.cached_entries(d, offline.label_of(d), CACHE_FORMAT)))
    tokenizer.check_tokenizer(d)
    if not d.causal:
        raise ConfigError("data.causal=false is not supported for data.task=text (next-token prediction); set data.causal=true")
    if d.val_tokens < 1:
        raise ConfigError(f"data.val_tokens={d.val_tokens} is out of range; it must be >= 1")
    if d.val_path is not None:
        corpus.local_files(d.val_path, "data.val_path")
    if d.max_tokens is not None and d.max_tokens < 2 * (d.val_tokens + d.seq_len + 1):
        raise ConfigError(
            f"data.max_tokens={d.max_tokens} leaves too little for data.val_tokens={d.val_tokens}; "
            f"raise it to at least {2 * (d.val_tokens + d.seq_len + 1)} or set it to null"
        )
    if d.num_proc is not None and d.num_proc < 1:
        raise ConfigError(f"data.num_proc={d.num_proc} is out of range; it must be >= 1, or null for one per core")


def cache_request(d: DataConfig, progress: bool = True) -> CacheRequest:
    if offline.path_missing(d):
        entries = offline.cached_entries(d, offline.label_of(d), CACHE_FORMAT)
        if entries:
            line = offline.describe_choice(d, entries)
            if line not in _SAID:  # once per process: eval builds the data once per context
                _SAID.add(line)
                print(line, file=sys.stderr, flush=True)
            path, meta = entries[0]
            gone = lambda: corpus.local_files(d.path)  # noqa: E731  never called: the entry is complete
            return CacheRequest(label=meta["label"], identity=meta["identity"], tokenizer=gone, documents=gone,
                                max_tokens=d.max_tokens, entry=path)
    corpus_id = corpus.identity(d)

    def docs() -> Iterator[str]:
        return corpus.documents(d)

    return CacheRequest(
        label=offline.label_of(d),
        identity={"corpus": corpus_id, "tokenizer": tokenizer.identity(d, corpus_id)},
        tokenizer=lambda: tokenizer.load_tokenizer(d, corpus_id, docs, progress),
        documents=docs,
        max_tokens=d.max_tokens,
        num_proc=d.num_proc,
        total_bytes=corpus.total_bytes(corpus_id),
        progress=progress,
    )


def split_point(tokens: TokenCache, val_tokens: int) -> int:
    """Where validation starts: `val_tokens` + 1 tokens from the end, moved back to a document start if one is near."""
    n = len(tokens)
    if val_tokens + 1 > n // 2:
        raise ConfigError(
            f"data.val_tokens={val_tokens} is more than half of the corpus ({n:,} tokens); lower data.val_tokens"
        )
    cut = n - val_tokens - 1
    lo = max(1, cut - val_tokens)
    eots = np.flatnonzero(tokens.read(lo, cut) == tokens.eot)
    return lo + int(eots[-1]) + 1 if len(eots) else cut


class TextData:
    causal = True
    exact_match = False

    @property
    def identity(self) -> dict:
        return self.tokens.identity

    @property
    def source(self) -> str:
        """The corpus as the user named it, for messages."""
        return f"data.path={self.cfg.path}" if self.cfg.path is not None else f"data.hub={self.cfg.hub}"

    def __init__(self, cfg: Config):
        d = cfg.data
        self.cfg, self.seed = d, cfg.seed
        self.tokens = open_token_cache(cache_request(d, progress=cfg.train.progress))
        self.vocab_size = self.tokens.vocab_size
        self.eot = self.tokens.eot
        # With a separate validation file the whole stream trains.
        self.val_start = len(self.tokens) if d.val_path is not None else split_point(self.tokens, d.val_tokens)
        if self.val_start < d.seq_len + 2:
            raise ConfigError(f"the corpus has only {self.val_start:,} training tokens, fewer than data.seq_len={d.seq_len}; use a larger corpus")
        self._val = self._val_file_rows() if d.val_path is not None else self._val_rows()

    def train_positions(self, step: int, micro: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _TRAIN_STREAM, step, micro])
        # The last training window's last target is token val_start - 1.
        return rng.integers(0, self.val_start - self.cfg.seq_len, size=self.cfg.batch_size)

    def train_batch(self, step: int, micro: int = 0) -> Batch:
        span = self.cfg.seq_len + 1
        rows = np.stack([self.tokens.read(int(s), int(s) + span) for s in self.train_positions(step, micro)])
        rows = torch.from_numpy(rows)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def _val_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation windows; the last is padded with end-of-text inputs whose targets are IGNORE."""
        n, L = self.cfg.val_tokens, self.cfg.seq_len
        stream = self.tokens.read(self.val_start, self.val_start + n + 1)
        rows = -(-n // L)
        x = np.full(rows * L, self.eot, dtype=np.int64)
        y = np.full(rows * L, IGNORE, dtype=np.int64)
        x[:n], y[:n] = stream[:-1], stream[1:]
        return torch.from_numpy(x.reshape(rows, L)), torch.from_numpy(y.reshape(rows, L))

    def _val_file_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """data.val_path's first `val_tokens` tokens (all of it when shorter), packed as held-out text is."""
        docs = heldout.read_documents(self.cfg, self.cfg.val_path, "data.val_path")
        x, y = heldout.packed_stream(heldout.encode_documents(self.tokens.tokenizer(), docs), self.eot, self.cfg.val_tokens)
        return heldout.window_rows(x, y, self.cfg.seq_len, self.eot)

    def val_batches(self) -> Iterator[Batch]:
        x, y = self._val
        bs = self.cfg.batch_size
        for i in range(0, len(x), bs):
            yield x[i : i + bs], y[i : i + bs]
