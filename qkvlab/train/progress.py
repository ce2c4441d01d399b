"""The training progress display: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws itself with carriage returns; a file (a SLURM log, `qkvlab train > run.log 2>&1`)
keeps every redraw, one ever longer line. Where stderr is not a terminal the run instead prints
one plain line every twentieth of the run (and at least every LINE_SECONDS), and one at the end.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

LINES_PER_RUN = 20
LINE_SECONDS = 300.0


class PlainProgress:
    """tqdm's interface as the loop uses it (update, set_postfix, close), written as plain lines."""

    def __init__(self, total: int, initial: int, desc: str, stream: TextIO, every: int | None = None, seconds: float = LINE_SECONDS):
        self.total, self.n, self.desc, self.stream = total, initial, desc, stream
        self.every = every or max(1, math.ceil(total / LINES_PER_RUN))
        self.seconds = seconds
        self.postfix: dict[str, Any] = {}
        self.start = self.last_time = time.monotonic()
        self.start_n = self.last_n = initial
        self.closed = False

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix.update(values)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self.last_n >= self.every or time.monotonic() - self.last_time >= self.seconds:
            self._line()

    def close(self) -> None:
        if not self.closed and self.n != self.last_n:
            self._line()
        self.closed = True

    def _line(self) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        done = self.n - self.start_n
        left = elapsed / done * (self.total - self.n) if done > 0 else math.nan
        eta = tqdm.format_interval(left) if math.isfinite(left) else "?"
        pct = 100 * self.n / self.total if self.total else 100.0
        values = "".join(f" {k}={v}" for k, v in self.postfix.items())
        self.stream.write(f"{self.desc}: step {self.n}/{self.total} ({pct:.0f}%) {tqdm.format_interval(elapsed)} elapsed, {eta} left{values}\n")
        self.stream.flush()
        self.last_n, self.last_time = self.n, now


def progress_bar(total: int, initial: int, desc: str, enabled: bool, stream: TextIO | None = None):
    """A tqdm bar on a terminal, PlainProgress on anything else, a silent bar when `enabled` is false."""
    stream = stream if stream is not None else sys.stderr
    if enabled and not _is_terminal(stream):
        return PlainProgress(total, initial, desc, stream)
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True, file=stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
