"""The study's synthetic tasks, plus multi-query associative recall.

Digit tasks (bidirectional, one target per position, digits 0-9): copy,
reverse, sort, sub (9 - x) and swap (second half, then first half).
mqar (causal): key-value pairs, then queries; scored only at the queries,
where the target is the value bound to the key.

Validation examples come from `data.val_seed`, training ones from the run's
seed and the step; training rows that equal a validation row are redrawn, so
the two never overlap. With `data.train_size=N` the training examples are a
fixed set of N rows drawn once from the seed, visited in a fresh order every
epoch, the last batch of an epoch holding the remainder: the study's recipe
(10,000 examples, batch 128: 79 steps an epoch).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from qkvlab.config import Config, DataConfig
from qkvlab.errors import ConfigError
from qkvlab.data.source import IGNORE, Batch

DIGIT_TASKS = ("copy", "reverse", "sort", "sub", "swap")
SYNTHETIC_TASKS = DIGIT_TASKS + ("mqar",)
_VAL_STREAM, _TRAIN_STREAM, _FIXED_STREAM, _ORDER_STREAM = 1, 0, 2, 3


def digit_targets(task: str, x: np.ndarray) -> np.ndarray:
    if task == "copy":
        return x.copy()
    if task == "reverse":
        return x[:, ::-1].copy()
    if task == "sort":
        return np.sort(x, axis=1)
    if task == "sub":
        return 9 - x
    if task == "swap":
        half = x.shape[1] // 2
        return np.concatenate([x[:, half:], x[:, :half]], axis=1)
    raise ValueError(task)


def mqar_example(d: DataConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of [k1 v1 ... kP vP q1 a1 ... qQ aQ]; target at each q_j is its value a_j."""
    pairs = d.num_pairs
    queries = (d.seq_len - 2 * pairs) // 2
    keys = np.argsort(rng.random((n, d.num_keys)), axis=1)[:, :pairs]
    values = d.num_keys + rng.integers(0, d.num_values, size=(n, pairs))
    pick = rng.integers(0, pairs, size=(n, queries))
    q_keys = np.take_along_axis(keys, pick, axis=1)
    q_vals = np.take_along_axis(values, pick, axis=1)
    x = np.empty((n, d.seq_len), dtype=np.int64)
    x[:, 0 : 2 * pairs : 2], x[:, 1 : 2 * pairs : 2] = keys, values
    x[:, 2 * pairs :: 2], x[:, 2 * pairs + 1 :: 2] = q_keys, q_vals
    y = np.full_like(x, IGNORE)
    y[:, 2 * pairs :: 2] = q_vals
    return x, y


def check_synthetic(d: DataConfig) -> None:
    if d.task == "swap" and d.seq_len % 2:
        raise ConfigError(f"data.task=swap needs an even data.seq_len, got {d.seq_len}")
    if d.task == "mqar":
        if d.num_pairs < 1 or d.num_pairs > d.num_keys:
            raise ConfigError(
                f"data.num_pairs={d.num_pairs} must be between 1 and data.num_keys={d.num_keys}"
            )
        if d.seq_len % 2 or d.seq_len <= 2 * d.num_pairs:
            raise ConfigError(
                f"data.task=mqar needs an even data.seq_len above 2*num_pairs={2 * d.num_pairs}, got {d.seq_len}"
            )
        if d.num_values < 1:
            raise ConfigError(f"data.num_values={d.num_values} must be at least 1")


class SyntheticTask:
    identity = None

    def __init__(self, cfg: Config):
        d = cfg.data
        self.cfg, self.seed = d, cfg.seed
        self.causal = d.causal
        self.exact_match = True
        self.vocab_size = d.num_keys + d.num_values if d.task == "mqar" else 10
        self.val_x, self.val_y = self._draw(np.random.default_rng([d.val_seed, _VAL_STREAM]), d.val_size)
        self._val_rows = {row.tobytes() for row in self.val_x}
        self.train_x = self.train_y = None
        self.accum = cfg.train.grad_accum
        if d.train_size:
            self.train_x, self.train_y = self._unseen(np.random.default_rng([cfg.seed, _FIXED_STREAM]), d.train_size)
            self._orders: dict[int, np.ndarray] = {}

    @property
    def steps_per_epoch(self) -> int | None:
        """Batches (micro-batches under accumulation) in one pass over a fixed training set."""
        d = self.cfg
        return -(-d.train_size // d.batch_size) if d.train_size else None

    def _unseen(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self._draw(rng, n)
        for i in range(len(x)):
            while x[i].tobytes() in self._val_rows:
                nx, ny = self._draw(rng, 1)
                x[i], y[i] = nx[0], ny[0]
        return x, y

    def _fixed_batch(self, index: int) -> Batch:
        epoch, b = divmod(index, self.steps_per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, _ORDER_STREAM, epoch]).permutation(len(self.train_x))}
        rows = self._orders[epoch][b * self.cfg.batch_size : (b + 1) * self.cfg.batch_size]
        return torch.from_numpy(self.train_x[rows]), torch.from_numpy(self.train_y[rows])

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        d = self.cfg
        if d.task == "mqar":
            return mqar_example(d, rng, n)
        x = rng.integers(0, 10, size=(n, d.seq_len), dtype=np.int64)
        return x, digit_targets(d.task, x)

    def train_batch(self, step: int, micro: int = 0) -> Batch:
        if self.train_x is not None:
            return self._fixed_batch(step * self.accum + micro)
        x, y = self._unseen(np.random.default_rng([self.seed, _TRAIN_STREAM, step, micro]), self.cfg.batch_size)
        return torch.from_numpy(x), torch.from_numpy(y)

    def val_batches(self) -> Iterator[Batch]:
        bs = self.cfg.batch_size
        for i in range(0, len(self.val_x), bs):
            yield torch.from_numpy(self.val_x[i : i + bs]), torch.from_numpy(self.val_y[i : i + bs])
