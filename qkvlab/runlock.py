"""One process per run directory.

Two processes writing the same run directory destroy each other's metrics and
checkpoints (the same sweep launched twice, a SLURM requeue while the old job
still runs). A job therefore holds an OS lock (flock) on `<run dir>/.lock` for
as long as it runs. The kernel drops the lock when its holder exits, however it
exits, so a killed run never leaves a stale lock; the file's content (pid, host,
start time) only serves the message a second process prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK = ".lock"


class RunDirBusy(Exception):
    """Another process holds the run directory; the message is one line naming it."""


def hold(run_dir: Path) -> "RunDirLock":
    """The run directory's lock, held; RunDirBusy when another process holds it. Release with `with`."""
    lock = RunDirLock(run_dir)
    lock.acquire()
    return lock


class RunDirLock:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def acquire(self) -> None:
        path = self.run_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            _flock_patiently(fd)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirBusy(
                f"run directory {self.run_dir} is in use by {holder}; wait for that run to end (or stop it), "
                "or train in another directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode(), 0)
        self.fd = fd

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def _flock_patiently(fd: int, tries: int = 10) -> None:
    """LOCK_EX, retried for half a second: a reader's `is_held` probe holds a shared lock for microseconds."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)


def is_held(run_dir: Path) -> bool:
    """Whether a process holds the run directory now (its summary may say `running` after a SIGKILL)."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the shared lock, if taken
    return False


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']} (since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
