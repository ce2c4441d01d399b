"""Checkpoints that survive crashes, full disks and bit rot.

A checkpoint is written to a temporary file, fsynced and renamed, so a crash
mid-write leaves the previous one untouched. Its size and CRC32 sit beside it
(`<name>.pt.sum`), so a truncated or corrupted file is told apart from a good
one and resume falls back to the previous good checkpoint. A checkpoint whose
sidecar is missing or unreadable cannot be verified and is never loaded: a
flipped byte in a tensor loads without complaint and resumes with other
weights. (The sidecar is renamed into place before the checkpoint, so a crash
between the two leaves an orphan sidecar, never an unverifiable checkpoint.)

An FSDP run's step checkpoints are directories, `step_<n>.dcp`, written by
every rank through torch.distributed.checkpoint (qkvlab/train/sharded_checkpoint.py):
each rank's shards (`__<rank>_0.distcp`), the index (`.metadata`), and rank 0's
loop state, RNG and run identity (`state.pt`). `checksums.json` holds the size
and CRC32 of every one of those files, so the same guarantees hold: a missing
or damaged shard is named and the checkpoint skipped. `load_training_state` is
the one loader: either format, into a plain, DDP or FSDP model, optimizer
state included (PyTorch, "Distributed Checkpoint" and
torch.distributed.checkpoint.state_dict; the full-state read of a sharded
checkpoint is what torch's format_utils.dcp_to_torch_save does).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zlib
from pathlib import Path
from typing import Any, Iterator

import torch

from qkvlab import __version__
from qkvlab.files import replace_atomically, write_text_atomic
from qkvlab.config import FORMAT_VERSION, Config, as_dict
from qkvlab.errors import ConfigError

CHECKPOINTS = "checkpoints"
FINAL = "final.pt"
_STEP_FILE = re.compile(r"^step_(\d+)\.(pt|dcp)$")
SHARDED = ".dcp"
MANIFEST = "checksums.json"
STATE_FILE = "state.pt"
_REQUIRED = ("format_version", "step", "config", "model", "optimizer", "rng", "loop")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used as asked (older format, other model); one line."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written (disk full, read-only); the previous one is kept."""


class CorruptCheckpoint(Exception):
    """A truncated, damaged or foreign file; resume skips it."""

    def verdict(self) -> str:
        return f"corrupt: {self}"


class UnverifiableCheckpoint(CorruptCheckpoint):
    """A checkpoint without a readable checksum sidecar: it may be damaged, so resume skips it too."""

    def verdict(self) -> str:
        return str(self)


class _CrcFile:
    """Checksums the bytes as torch.save writes them, so the file is read once, not twice."""

    def __init__(self, f):
        self.f, self.crc, self.size = f, 0, 0
        # torch.save reports a failed write (ENOSPC) as `RuntimeError: enforce fail at inline_container.cc`.
        self.error: OSError | None = None

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def step_path(run_dir: Path, step: int, sharded: bool = False) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}{SHARDED if sharded else '.pt'}"


def sum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sum")


def remove_checkpoint(path: Path) -> None:
    """A checkpoint and its checksum sidecar (a sharded one: its directory)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        return
    path.unlink(missing_ok=True)
    sum_path(path).unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to `path` and its checksum; on any failure `path` keeps its old content and no temporary is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    side, side_tmp = sum_path(path), sum_path(path).with_name(sum_path(path).name + ".tmp")
    sink = None
    try:
        with open(tmp, "wb") as f:
            sink = _CrcFile(f)
            torch.save(obj, sink)
            f.flush()
            os.fsync(f.fileno())
        with open(side_tmp, "w") as f:
            f.write(json.dumps({"bytes": sink.size, "crc32": sink.crc}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        replace_atomically(side_tmp, side)
        replace_atomically(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        side_tmp.unlink(missing_ok=True)
        if isinstance(exc, RuntimeError) and sink is not None and sink.error is not None:
            raise sink.error from exc
        raise


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's step checkpoints, newest first."""
    folder = Path(run_dir) / CHECKPOINTS
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _STEP_FILE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def write_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save step `step`, then drop all but the `keep` newest; a failed write keeps every older checkpoint."""
    path = step_path(run_dir, step)
    payload = {"format_version": FORMAT_VERSION, "qkvlab_version": __version__, "step": step, **state}
    try:
        atomic_torch_save(payload, path)
    except OSError as exc:
        raise write_failure(run_dir, step, path, exc) from exc
    for _, old in step_checkpoints(run_dir)[keep:]:
        remove_checkpoint(old)
    return path


def write_failure(run_dir: Path, step: int, path: Path, exc: OSError) -> CheckpointWriteError:
    """The one line for a checkpoint that could not be written, naming the one kept."""
    previous = next((p for s, p in step_checkpoints(run_dir) if s != step), None)
    kept = f"the previous checkpoint {previous} is kept" if previous else "no earlier checkpoint exists"
    reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return CheckpointWriteError(f"could not write checkpoint {path}: {reason}; {kept}")


def mark_final(path: Path) -> Path:
    """checkpoints/final.pt: the last step checkpoint under the name other tools load."""
    final = path.parent / FINAL
    tmp = final.with_name(FINAL + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        import shutil

        shutil.copyfile(path, tmp)
    write_text_atomic(sum_path(final), sum_path(path).read_text())
    replace_atomically(tmp, final)
    return final


def _crc_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _expected(path: Path) -> dict[str, int]:
    """Size and CRC32 from the sidecar; UnverifiableCheckpoint when there is none to trust."""
    side = sum_path(path)
    try:
        expected = json.loads(side.read_text())
    except FileNotFoundError:
        raise UnverifiableCheckpoint(f"unverifiable: its checksum file {side.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise UnverifiableCheckpoint(f"unverifiable: its checksum file {side.name} is unreadable ({type(exc).__name__})") from None
    if not (isinstance(expected, dict) and isinstance(expected.get("bytes"), int) and isinstance(expected.get("crc32"), int)):
        raise UnverifiableCheckpoint(f"unverifiable: its checksum file {side.name} is not a size and CRC32")
    return expected


def _verify(path: Path, expected: dict[str, int], what: str | None = None) -> None:
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise CorruptCheckpoint(f"truncated ({what + ': ' if what else ''}{size:,} of {expected['bytes']:,} bytes)")
    if _crc_of(path) != expected["crc32"]:
        raise CorruptCheckpoint(f"checksum mismatch ({what or 'the file'} is damaged)")


def _load_payload(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CorruptCheckpoint(f"unreadable ({first[:120]})") from exc


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of a qkvlab checkpoint, or CorruptCheckpoint saying in a few words what is wrong.
    A sharded checkpoint's payload holds the weights' shapes (meta tensors) under "model" and its
    directory under "sharded": `load_training_state` reads the tensors."""
    path = Path(path)
    if path.is_dir():
        return _read_sharded(path)
    _verify(path, _expected(path))
    payload = _load_payload(path)
    if not isinstance(payload, dict) or "model" not in payload:
        raise CorruptCheckpoint("not a qkvlab checkpoint")
    return payload


def _manifest(path: Path) -> dict[str, dict[str, int]]:
    side = path / MANIFEST
    try:
        files = json.loads(side.read_text())["files"]
    except FileNotFoundError:
        raise UnverifiableCheckpoint(f"unverifiable: its checksum file {MANIFEST} is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnverifiableCheckpoint(f"unverifiable: its checksum file {MANIFEST} is unreadable ({type(exc).__name__})") from None
    ok = isinstance(files, dict) and STATE_FILE in files and all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("crc32"), int) for v in files.values()
    )
    if not ok:
        raise UnverifiableCheckpoint(f"unverifiable: its checksum file {MANIFEST} is not a size and CRC32 per file")
    return files


def _read_sharded(path: Path) -> dict[str, Any]:
    from torch.distributed.checkpoint import FileSystemReader

    for name, expected in sorted(_manifest(path).items()):
        if not (path / name).is_file():
            raise CorruptCheckpoint(f"incomplete (shard {name} is missing)")
        _verify(path / name, expected, f"shard {name}")
    payload = _load_payload(path / STATE_FILE)
    if not isinstance(payload, dict) or "loop" not in payload:
        raise CorruptCheckpoint("not a qkvlab checkpoint")
    try:
        index = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as exc:
        raise CorruptCheckpoint(f"unreadable index ({type(exc).__name__})") from exc
    shapes = {k[len("model."):]: torch.empty(v.size, device="meta") for k, v in index.items() if k.startswith("model.") and hasattr(v, "size")}
    return {**payload, "model": shapes, "optimizer": None, "sharded": str(path)}


def _full_sharded_state(path: str) -> dict[str, Any]:
    """Every tensor of a sharded checkpoint, whole, read by this process alone."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    full: dict[str, Any] = {}
    _load_state_dict(full, storage_reader=FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return full


def _is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _optimizer_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """torch's optimizer state (parameters numbered in group order) keyed by parameter name instead,
    the form torch.distributed.checkpoint.state_dict takes; the optimizer is built the same way at any world size."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]
    return {"state": {order[i]: v for i, v in saved["state"].items()}, "param_groups": groups}


def load_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, payload: dict[str, Any]) -> None:
    """Weights and optimizer state from either format into a plain, DDP or FSDP model. Into an FSDP
    model every rank calls this together (it scatters and gathers); into any other, each alone."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
        set_state_dict,
    )

    sharded_model = _is_sharded(model)
    if payload.get("sharded") and sharded_model:
        import torch.distributed.checkpoint as dcp

        weights, moments = get_state_dict(model, optimizer)
        state = {"model": weights, "optimizer": moments}
        dcp.load(state, checkpoint_id=payload["sharded"])
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        return
    if payload.get("sharded"):
        full = _full_sharded_state(payload["sharded"])
        weights, moments = full["model"], full["optimizer"]
    else:
        weights, moments = payload["model"], payload["optimizer"]
    by_index = all(isinstance(k, int) for k in moments["state"])
    if not sharded_model:
        model.load_state_dict(weights)
        if by_index:
            optimizer.load_state_dict(moments)
            return
    else:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    named = _optimizer_by_name(model, optimizer, moments) if by_index else moments
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))


def good_checkpoints(run_dir: Path, say=print) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The run's checkpoints that load, newest first; each bad one is reported in one line and skipped."""
    for _, path in step_checkpoints(run_dir):
        try:
            yield path, read_checkpoint(path)
        except CorruptCheckpoint as exc:
            say(f"qkvlab: checkpoint {path} is {exc.verdict()}; falling back to the previous one")


def version_problem(what: str, version: int, fix: str) -> str | None:
    """The one line for a file from another qkvlab format (checkpoints, run directories), or None."""
    if version == FORMAT_VERSION:
        return None
    age = "an older" if version < FORMAT_VERSION else "a newer"
    return f"{what} was written by {age} qkvlab (format {version}; qkvlab {__version__} reads format {FORMAT_VERSION}); {fix}"


def check_resumable(payload: dict[str, Any], cfg: Config, path: Path) -> None:
    """Refuse a checkpoint from another format or another model, naming what differs."""
    problem = version_problem(f"checkpoint {path}", payload.get("format_version", 0), "start fresh with train.resume=never or a new run directory")
    if problem:
        raise CheckpointError(problem)
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it cannot be resumed from, start with train.resume=never")
    old, new = payload["config"], as_dict(cfg)
    diffs = []
    for group in ("model", "variant"):
        a, b = old.get(group, {}), new[group]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{group}.{key} ({a.get(key)!r} -> {b.get(key)!r})")
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: the model differs in {', '.join(diffs)}; "
            "restore those values, or start fresh with train.resume=never"
        )


def shape_diffs(saved: dict[str, torch.Tensor], model: torch.nn.Module) -> str | None:
    """The parameters whose shapes differ between saved weights and `model`, as a short list, or None."""
    current = model.state_dict()
    diffs = [
        f"{k} ({tuple(saved[k].shape) if k in saved else 'absent'} -> {tuple(current[k].shape) if k in current else 'absent'})"
        for k in sorted(set(saved) | set(current))
        if k not in saved or k not in current or saved[k].shape != current[k].shape
    ]
    if not diffs:
        return None
    return ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")


def check_shapes(saved: dict[str, torch.Tensor], model: torch.nn.Module, path: Path) -> None:
    shown = shape_diffs(saved, model)
    if shown:
        raise CheckpointError(
            f"cannot resume from {path}: tensor shapes differ: {shown}; use the model config it was trained with"
        )
