"""Checkpoint files: atomic writes, rotation, corruption detected and skipped."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from qkvlab.config import Config
from qkvlab.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpoint,
    check_resumable,
    good_checkpoints,
    read_checkpoint,
    step_checkpoints,
    write_checkpoint,
)


def state(value: float) -> dict:
    from qkvlab.config import as_dict

    return {"config": as_dict(Config()), "model": {"w": torch.full((256,), value)}, "optimizer": {}, "rng": {}, "loop": {}}


class Interrupt:
    """Pickling this raises, like a SIGINT arriving in the middle of torch.save."""

    def __reduce__(self):
        raise KeyboardInterrupt


def test_interrupted_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    write_checkpoint(tmp_path, 10, state(1.0), keep=3)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, 20, {**state(2.0), "boom": Interrupt()}, keep=3)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [10]
    assert not list(tmp_path.rglob("*.tmp"))
    (path, payload), = good_checkpoints(tmp_path)
    assert payload["step"] == 10 and torch.equal(payload["model"]["w"], torch.full((256,), 1.0))


def test_keeps_the_newest_n(tmp_path):
    for step in (10, 20, 30, 40):
        write_checkpoint(tmp_path, step, state(step), keep=2)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [40, 30]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_00000030.pt", "step_00000030.pt.sum", "step_00000040.pt", "step_00000040.pt.sum"
    ]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:1000] + bytes([b[1000] ^ 0xFF]) + b[1001:], "checksum mismatch"),
    ],
)
def test_damaged_latest_falls_back_to_previous_in_one_line(tmp_path, damage, reason):
    write_checkpoint(tmp_path, 10, state(1.0), keep=3)
    latest = write_checkpoint(tmp_path, 20, state(2.0), keep=3)
    latest.write_bytes(damage(latest.read_bytes()))
    said = []
    path, payload = next(good_checkpoints(tmp_path, say=said.append))
    assert payload["step"] == 10
    assert len(said) == 1 and str(latest) in said[0] and reason in said[0] and "previous" in said[0]


@pytest.mark.parametrize("sidecar", ["missing", "empty"])
def test_a_checkpoint_without_a_readable_checksum_is_never_loaded(tmp_path, sidecar):
    """A flipped byte in a checkpoint whose .sum is gone would resume with other weights: fall back instead."""
    previous = write_checkpoint(tmp_path, 10, state(1.0), keep=3)
    latest = write_checkpoint(tmp_path, 20, state(2.0), keep=3)
    side = Path(str(latest) + ".sum")
    side.unlink() if sidecar == "missing" else side.write_text("")
    data = bytearray(latest.read_bytes())
    data[data.index(torch.full((4,), 2.0).numpy().tobytes()) + 1] ^= 0x01  # in the tensor data: torch.load does not notice
    latest.write_bytes(bytes(data))
    said = []
    (path, payload), = good_checkpoints(tmp_path, say=said.append)
    assert path == previous and payload["step"] == 10
    assert len(said) == 1 and str(latest) in said[0] and "unverifiable" in said[0] and ".sum" in said[0]
    assert "previous" in said[0]
    with pytest.raises(CorruptCheckpoint, match="unverifiable"):
        read_checkpoint(latest)


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB file system (tmpfs): a big write fails with ENOSPC as on a full disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_big_checkpoint_on_a_full_disk_says_no_space_left(small_disk):
    """On a full disk torch.save raises `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos`."""
    previous = write_checkpoint(small_disk, 10, state(1.0), keep=1)
    with pytest.raises(CheckpointWriteError) as err:
        write_checkpoint(small_disk, 20, {**state(2.0), "model": {"w": torch.zeros(1 << 16)}}, keep=1)
    assert str(err.value) == (
        f"could not write checkpoint {small_disk / 'checkpoints' / 'step_00000020.pt'}: no space left on device; "
        f"the previous checkpoint {previous} is kept"
    )
    assert [s for s, _ in step_checkpoints(small_disk)] == [10] and read_checkpoint(previous)["step"] == 10
    assert not list(small_disk.rglob("*.tmp"))


def test_older_format_and_changed_model_are_refused_by_name(tmp_path):
    cfg = Config()
    payload = read_checkpoint(write_checkpoint(tmp_path, 10, state(1.0), keep=1))
    check_resumable(payload, cfg, Path("c.pt"))
    with pytest.raises(CheckpointError, match=r"older qkvlab \(format 0"):
        check_resumable({**payload, "format_version": 0}, cfg, Path("c.pt"))
    cfg.model.d_model, cfg.variant.sharing = 128, "k_eq_v"
    with pytest.raises(CheckpointError) as err:
        check_resumable(payload, cfg, Path("c.pt"))
    assert "model.d_model (64 -> 128)" in str(err.value) and "variant.sharing ('mha' -> 'k_eq_v')" in str(err.value)
