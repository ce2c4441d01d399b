"""How a job of several processes was launched, and what it takes to start it again.

torchrun: the printed resume command must be a torchrun command, or it would resume with one
process. A worker does not see torchrun's options, so they are read from its parent, the
torchrun agent (/proc/PPID/cmdline on Linux); where that fails, a plain
`torchrun --nnodes=N --nproc_per_node=M` from the environment torchrun sets.

SLURM through Hydra's submitit launcher (hydra-submitit-launcher 1.2.0, submitit 1.5.4): each
sweep job is one submitit job of nodes x tasks_per_node tasks, and every task unpickles the
launcher and runs the same Hydra job (`BaseSubmititLauncher.__call__`), so every task is one
rank. submitit names the tasks in SLURM_* (SUBMITIT_LOCAL_* for its local executor);
`submitit.helpers.TorchDistributedEnvironment().export()` turns them into torch's env://
variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR: the first node, MASTER_PORT: drawn from
the job id), which is all `distributed.session` reads.

submitit asks SLURM for its signal (SIGUSR2) `signal_delay_s` before the time limit, and SLURM
sends it on preemption where the cluster sets preempt_send_user_signal. submitit's own handler
would requeue at once from task 0, mid-step and without a checkpoint. qkvlab takes that signal
like SIGTERM (qkvlab/train/signals.py): every rank stops at one step boundary, rank 0 writes the
checkpoint and the summary, and only then hands the signal to submitit's handler, which asks the
launcher's `checkpoint` for the job to run next (the same job, the same overrides), counts the
timeout and requeues (`scontrol requeue`; the local executor exits 144 and is restarted). The
requeued job composes the same config, so it trains in the same run directory and resumes there,
W&B run id included (run.json).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch.distributed as dist

from qkvlab.train.distributed import World
from qkvlab.train.signals import submitit_signal


def under_torchrun(env: Mapping[str, str] = os.environ) -> bool:
    return "TORCHELASTIC_RUN_ID" in env


def torchrun_prefix(args: Sequence[str], env: Mapping[str, str] = os.environ, parent: Optional[Sequence[str]] = None) -> list[str]:
    """The torchrun command line up to the qkvlab arguments `args` (its options and `-m qkvlab train`)."""
    if parent is None:
        parent = parent_cmdline()
    args = list(args)
    if parent and (not args or list(parent[len(parent) - len(args):]) == args):
        launcher = list(parent[: len(parent) - len(args)])
        for i, word in enumerate(launcher):
            if Path(word).name == "torchrun":
                return ["torchrun", *launcher[i + 1:]]
            if word == "torch.distributed.run" and i and launcher[i - 1] == "-m":
                return ["python", *launcher[i - 1:]]
    nodes = int(env.get("WORLD_SIZE", 1)) // max(1, int(env.get("LOCAL_WORLD_SIZE", 1)))
    return ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={env.get('LOCAL_WORLD_SIZE', 1)}", "-m", "qkvlab", "train"]


def parent_cmdline() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def resume_prefix(args: Sequence[str]) -> list[str]:
    """The command that starts `qkvlab train` again the way this process was started."""
    return torchrun_prefix(args) if under_torchrun() else ["qkvlab", "train"]


def quoted(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def adopt_submitit_tasks(env=os.environ) -> None:
    """In a submitit job of several tasks, export torch's rank variables (see the module docstring)."""
    if not env.get("SUBMITIT_EXECUTOR") or "WORLD_SIZE" in env:
        return
    from submitit.helpers import TorchDistributedEnvironment

    tasks = TorchDistributedEnvironment()
    if tasks.world_size > 1:
        # Each rank picks its GPU by LOCAL_RANK (World.device), so every task keeps seeing them all.
        tasks.export(set_cuda_visible_devices=False)


def requeue(signum: int) -> Optional[str]:
    """On rank 0, after the checkpoint: hand submitit's signal to submitit's handler, which requeues the
    job and exits. None when the signal is not submitit's; the reason when submitit did not requeue."""
    if signum != submitit_signal():
        return None
    handler = signal.getsignal(signum)
    if not callable(handler):
        return "no submitit handler is installed for it"
    try:
        handler(signum, None)
    except SystemExit:
        raise
    except Exception as exc:  # submitit: "Job not requeued because: timed-out too many times."
        return str(exc)
    return None


def leave_together(world: World) -> None:
    """Ranks other than 0 leave a stopped job only once rank 0 has written the checkpoint and the
    summary and requeued it: torchrun and srun end the other tasks when one exits. That SIGTERM can
    still reach a rank that is slower to exit than the first: from here on the job has agreed to stop,
    so once every rank is past the barrier it is ignored, and the rank leaves with the stop's own code,
    not killed halfway through its exit. (Before the barrier it still ends a rank whose peer died.)"""
    if world.distributed:
        dist.barrier()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
