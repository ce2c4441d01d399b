"""Step checkpoints of an FSDP run: every rank writes its own shards, none gathers the model.

torch.distributed.checkpoint (PyTorch, "Distributed Checkpoint - torch.distributed.checkpoint")
writes each rank's shards of the weights and AdamW moments to one directory with an index,
and reads them back at any world size. Around it, the guarantees of a single-file checkpoint
(qkvlab/train/checkpoint.py): the directory is written as `step_<n>.dcp.tmp`; once every rank
has written, each rank's CRC32s of its own files reach rank 0, which adds the loop state, RNG and
run identity (`state.pt`), writes `checksums.json` and only then renames the directory into
place. A crash before the rename leaves a temporary that resume removes; after it, a checkpoint
whose every file is checksummed. Rank 0 alone prunes to `train.keep_checkpoints`, under the run
directory's lock it holds. `final.pt` stays one consolidated file (`write_consolidated`), so what
reads a finished run (eval, convert, generate, init_from) needs nothing new.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from qkvlab import __version__
from qkvlab.config import FORMAT_VERSION
from qkvlab.files import replace_atomically
from qkvlab.train.checkpoint import (
    MANIFEST,
    STATE_FILE,
    atomic_torch_save,
    remove_checkpoint,
    step_checkpoints,
    step_path,
    write_failure,
    _CrcFile,
    _crc_of,
)
from qkvlab.train.distributed import World


def _checksums(folder: Path, names: list[str]) -> dict[str, dict[str, int]]:
    return {name: {"bytes": (folder / name).stat().st_size, "crc32": _crc_of(folder / name)} for name in names}


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(tmp: Path, path: Path, state: dict[str, Any], files: dict[str, dict[str, int]]) -> None:
    """Rank 0: the loop state, the manifest, then the rename that makes the checkpoint exist."""
    with open(tmp / STATE_FILE, "wb") as f:
        sink = _CrcFile(f)
        torch.save(state, sink)
        f.flush()
        os.fsync(f.fileno())
    files = {**files, STATE_FILE: {"bytes": sink.size, "crc32": sink.crc}}
    with open(tmp / MANIFEST, "w") as f:
        f.write(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    old = path.with_name(path.name + ".old.tmp")
    if path.exists():  # the same step written again (a resumed run's owed evaluation): swap, then drop the old one
        replace_atomically(path, old)
    replace_atomically(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def write_sharded_checkpoint(
    run_dir: Path, step: int, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, keep: int, world: World
) -> Path:
    """Every rank calls this together. `state`: rank 0's checkpoint without weights and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = step_path(run_dir, step, sharded=True)
    tmp = path.with_name(path.name + ".tmp")

    def prepare() -> None:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise write_failure(run_dir, step, path, exc) from exc

    world.from_main(prepare)
    weights, moments = get_state_dict(model, optimizer)
    problem = None
    try:
        dcp.save({"model": weights, "optimizer": moments}, storage_writer=dcp.FileSystemWriter(str(tmp), sync_files=True))
        mine = sorted(p.name for p in tmp.glob(f"__{world.rank}_*.distcp")) + ([".metadata"] if world.is_main else [])
        sums = _checksums(tmp, mine)
    except OSError as exc:
        problem, sums = exc, {}
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, (sums, None if problem is None else (problem.errno, problem.strerror or str(problem))))

    def seal() -> Path:
        failed = next((err for _, err in gathered if err is not None), None)
        try:
            if failed is not None:
                raise OSError(*failed)
            _seal(tmp, path, {"format_version": FORMAT_VERSION, "qkvlab_version": __version__, "step": step, **state},
                  {name: v for part, _ in gathered for name, v in part.items()})
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_failure(run_dir, step, path, exc) from exc
        for _, old in step_checkpoints(run_dir)[keep:]:
            remove_checkpoint(old)
        return path

    return world.from_main(seal)


def write_consolidated(path: Path, step: int, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, world: World) -> None:
    """One single-file checkpoint of the whole model and optimizer, gathered to rank 0's memory
    (every rank calls this together; rank 0 writes). This is what `final.pt` of an FSDP run is."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    moments = get_optimizer_state_dict(model, optimizer, options=options)

    def write() -> None:
        payload = {"format_version": FORMAT_VERSION, "qkvlab_version": __version__, "step": step, **state,
                   "model": weights, "optimizer": moments}
        atomic_torch_save(payload, path)

    world.from_main(write)
