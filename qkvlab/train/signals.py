"""Preemption: SIGTERM (SLURM, Kubernetes) and SIGINT (Ctrl-C) ask the run to stop.

The handler only sets a flag; the loop checkpoints at the next step boundary
and raises `Preempted`, so no file is ever half-written. A second Ctrl-C
stops at once (the last checkpoint stays).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

HANDLED = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's convention for death by signal: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


class Preempted(Exception):
    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}")


class StopRequest:
    """Context manager that turns the handled signals into a flag for the loop."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            name = signal.Signals(signum).name
            more = " (Ctrl-C again to stop without it)" if signum == signal.SIGINT else ""
            print(f"\nqkvlab: {name} received; writing a checkpoint at the end of this step{more}", flush=True)
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None
