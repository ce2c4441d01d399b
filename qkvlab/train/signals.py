"""Preemption: SIGTERM (SLURM, Kubernetes), SIGINT (Ctrl-C) and, in a submitit job, submitit's
signal (SIGUSR2: the time limit is near, or the job is preempted) ask the run to stop.

The handler only sets a flag; the loop checkpoints at the next step boundary
and raises `Preempted`, so no file is ever half-written. A second Ctrl-C
stops at once (the last checkpoint stays).

In a job of several processes any rank may get the signal (torchrun or SLURM
signals each process; `kill` one), and every rank must stop at the same step
boundary: a rank that stopped alone would leave the others waiting in the next
gradient all-reduce. So the ranks vote at every step boundary: each puts its
flag into a MAX all-reduce on a gloo group of its own (host memory, so a CUDA
job never waits for its GPU), started after one step and read after the next,
by which time it has long finished. Every rank reads the same result at the
same step, one step after the signal arrived, and the cost is one
asynchronous 4-byte all-reduce per step. When ranks got different signals, the
job stops with the highest in `priority()`: a submitit requeue beats SIGTERM,
which beats SIGINT.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from qkvlab.train.distributed import SINGLE, World

def submitit_signal(env=os.environ) -> Optional[int]:
    """The signal submitit sends a job before its time limit and on preemption (SUBMITIT_PREEMPT_SIGNAL,
    USR2 by default, as submitit reads it), inside a submitit job only; None elsewhere."""
    if not env.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + env.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def priority() -> tuple[int, ...]:
    """The signals handled, lowest first: the job stops with the highest one any rank got."""
    extra = submitit_signal()
    return (signal.SIGINT, signal.SIGTERM) + ((extra,) if extra is not None else ())


def exit_code(signum: int) -> int:
    """The shell's convention for death by signal: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


class Preempted(Exception):
    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}")


class StopRequest:
    """Context manager that turns the handled signals into a flag, and the ranks' flags into one decision.

    Every rank of a job constructs it at the same point (the gloo group is made collectively)."""

    def __init__(self, world: World = SINGLE) -> None:
        self.signum: Optional[int] = None
        self.agreed: Optional[int] = None
        self._previous: dict[int, object] = {}
        self._group = dist.new_group(backend="gloo") if world.distributed else None
        self._vote: Optional[tuple[torch.Tensor, object]] = None
        self._order = priority()

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self._order:
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
            if signum == submitit_signal():
                more = " (submitit: the time limit is near or the job is preempted; it is requeued after the checkpoint)"
            print(f"\nqkvlab: {name} received; writing a checkpoint at the end of this step{more}", flush=True)
        self.signum = signum

    @property
    def requested(self) -> bool:
        """This process got a signal (the job may not have agreed to stop yet)."""
        return self.signum is not None

    def poll(self) -> Optional[int]:
        """The signal the job stops with, or None. Every rank must call it at the same points (each step
        boundary, each validation batch): then every rank gets the same answer at the same call."""
        if self.agreed is not None:
            return self.agreed
        if self._group is None:
            self.agreed = self.signum
            return self.agreed
        if self._vote is not None:
            flag, work = self._vote
            self._vote = None
            work.wait()
            if int(flag):
                self.agreed = self._order[int(flag) - 1]
                return self.agreed
        mine = self._order.index(self.signum) + 1 if self.signum in self._order else 0
        flag = torch.tensor(mine, dtype=torch.int32)
        self._vote = (flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True))
        return None

    def settle(self) -> None:
        """Wait for the vote in flight, at the end of a loop every rank reaches."""
        if self._vote is not None:
            self._vote[1].wait()
            self._vote = None
