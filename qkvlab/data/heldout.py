"""Held-out text outside the training token stream, packed for scoring: `data.val_path` (validation
during training) and `qkvlab eval --data.path` (a corpus scored after it) read it the same way.

The files are read by the corpus readers training uses and tokenized in memory with the run's
tokenizer, in the token cache's pieces (cut where byte-level BPE cuts anyway, so the tokens are what
the cache would hold). Documents are packed as training packs them, each after an end-of-text token,
and the targets are exactly the documents' tokens: the end-of-text between documents is context,
never a target, so a score says how well the model predicts that text and nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np
import torch

from qkvlab.config import DataConfig
from qkvlab.data import corpus
from qkvlab.data.corpus import split_document
from qkvlab.data.source import IGNORE, Batch
from qkvlab.errors import ConfigError


def read_documents(d: DataConfig, path: str, key: str) -> list[str]:
    """The documents of local `path`, read as data.path would be (the run's text_field)."""
    corpus.local_files(path, key)
    local = dataclasses.replace(d, path=path, hub=None, hub_config=None, split="train", streaming=False)
    docs = [t for t in corpus.documents(local) if t]
    if not docs:
        raise ConfigError(f"{key}={path} holds no text; point {key} at a file with text in it")
    return docs


def encode_documents(tokenizer, docs: Sequence[str]) -> list[np.ndarray]:
    return [np.concatenate([np.asarray(p, dtype=np.int64) for p in tokenizer.encode_batch(split_document(doc))]) for doc in docs]


def packed_stream(encoded: Sequence[np.ndarray], eot: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) over the documents, each after an end-of-text that is never a target; with
    `limit`, only the first `limit` targets (the stream stops there)."""
    pieces, scored = [], []
    for tokens in encoded:
        pieces += [np.array([eot], dtype=np.int64), tokens]
        scored += [np.array([False]), np.ones(len(tokens), dtype=bool)]
    stream, keep = np.concatenate(pieces), np.concatenate(scored)
    x, y = stream[:-1], np.where(keep[1:], stream[1:], IGNORE)
    if limit is not None and int((y != IGNORE).sum()) > limit:
        end = int(np.flatnonzero(y != IGNORE)[limit - 1]) + 1
        x, y = x[:end], y[:end]
    return x, y


def window_rows(x: np.ndarray, y: np.ndarray, length: int, eot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stream cut into rows of `length`; the last is padded with end-of-text inputs and IGNORE targets."""
    rows = -(-len(x) // length)
    px = np.full(rows * length, eot, dtype=np.int64)
    py = np.full(rows * length, IGNORE, dtype=np.int64)
    px[: len(x)], py[: len(y)] = x, y
    return torch.from_numpy(px.reshape(rows, length)), torch.from_numpy(py.reshape(rows, length))


def batches(rows: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> Iterator[Batch]:
    x, y = rows
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]
