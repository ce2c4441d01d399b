"""Build-once cache directories shared by every run and every multirun job.

An entry is a directory that appears only when complete: it is built in a
temporary sibling and renamed into place, under a file lock, so jobs that
start together build it once (the others wait) and no reader ever sees a
half-written entry.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout

from qkvlab.files import write_json_atomic

COMPLETE = "meta.json"


def cache_root() -> Path:
    return Path(os.environ.get("QKVLAB_CACHE") or Path.home() / ".cache" / "qkvlab").expanduser()


def entry_name(label: str, identity: dict[str, Any]) -> str:
    """A readable, collision-free directory name: a slug of `label` plus a hash of `identity`."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[:60] or "entry"
    return f"{slug}-{digest}"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    """Written last by a builder: its presence marks the entry complete."""
    write_json_atomic(path / COMPLETE, meta)


def unwritable(exc: OSError) -> Exception:
    """The cache root cannot be written: one line naming it (other OS errors pass through)."""
    if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
        return exc
    from qkvlab.errors import ConfigError

    return ConfigError(
        f"QKVLAB_CACHE={cache_root()} is not writable ({exc.strerror}: {exc.filename}); "
        "set QKVLAB_CACHE to a writable directory"
    )


def build_once(path: Path, build: Callable[[Path], None], what: str) -> Path:
    """Return `path`, building it with `build(tmp_dir)` unless a complete entry exists.

    `build` must finish by calling `write_meta(tmp_dir, ...)`.
    """
    path = Path(path)
    if is_complete(path):
        return path
    lock = FileLock(str(path) + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        print(f"qkvlab: another job is building the {what} at {path}; waiting for it", file=sys.stderr, flush=True)
        lock.acquire()
    except OSError as exc:
        raise unwritable(exc) from exc
    try:
        if is_complete(path):
            return path
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed builder; we hold the lock
        if path.exists():
            shutil.rmtree(path)  # an entry without meta.json is never read; rebuild it
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        try:
            tmp.mkdir()
        except OSError as exc:
            raise unwritable(exc) from exc
        try:
            build(tmp)
            if not is_complete(tmp):
                raise RuntimeError(f"building the {what} did not finish {COMPLETE}")
            os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path
    finally:
        lock.release()
