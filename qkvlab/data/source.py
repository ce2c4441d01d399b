"""What the training loop needs from any data: deterministic batches by step.

A batch is a pure function of (seed, step, micro-step), so a resumed run sees
exactly the data it would have seen, and two variants with one seed see the
same order. Targets use IGNORE wherever a position is not scored.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import torch

IGNORE = -100

Batch = tuple[torch.Tensor, torch.Tensor]


class DataSource(Protocol):
    vocab_size: int
    causal: bool
    # True for tasks whose sequences have a single right answer (exact match is reported).
    exact_match: bool

    def train_batch(self, step: int, micro: int = 0) -> Batch: ...

    def val_batches(self) -> Iterator[Batch]: ...
