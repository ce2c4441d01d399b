"""What the training loop needs from any data: deterministic batches by step.

A batch is a pure function of (seed, step, micro-step), so a resumed run sees
exactly the data it would have seen, and two variants with one seed see the
same order. Targets use IGNORE wherever a position is not scored.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, Optional, Protocol

import torch

IGNORE = -100

Batch = tuple[torch.Tensor, torch.Tensor]


class DataSource(Protocol):
    vocab_size: int
    causal: bool
    # True for tasks whose sequences have a single right answer (exact match is reported).
    exact_match: bool
    # What a run records of its data (qkvlab/data/token_cache.py TokenCache.identity); None for
    # synthetic tasks, whose data is a pure function of the config.
    identity: Optional[dict[str, Any]]

    def train_batch(self, step: int, micro: int = 0) -> Batch: ...

    def val_batches(self) -> Iterator[Batch]: ...


def _describe(ident: Optional[dict[str, Any]], source: str = "") -> str:
    if ident is None:
        return "synthetic data"
    where = f"{source}, " if source else ""
    return f"token cache {ident['entry']} ({where}{ident['tokens']:,} tokens, checksum {ident['checksum']})"


def check_same_data(trained: Any, data: DataSource, where: str, fix: str) -> None:
    """Refuse data other than what the checkpoint `where` trained on. The token checksum decides: the
    same tokens are the same data, whatever the entry is called. `trained` is the checkpoint's record,
    or MISSING for a checkpoint older than the record (accepted with a note)."""
    now, source = getattr(data, "identity", None), getattr(data, "source", "")
    if trained is MISSING:
        if now is not None:
            print(f"qkvlab: note: {where} predates corpus checks; cannot tell whether {_describe(now, source)} "
                  "is the corpus it trained on", file=sys.stderr, flush=True)
        return
    same = (trained is None and now is None) or (
        trained is not None and now is not None and (trained["checksum"], trained["tokens"]) == (now["checksum"], now["tokens"]))
    if not same:
        from qkvlab.errors import ConfigError

        raise ConfigError(
            f"the corpus changed since this run trained: {_describe(now, source)} is not "
            f"{_describe(trained)} it trained on ({where}); restore the corpus, or {fix}"
        )


MISSING = object()
