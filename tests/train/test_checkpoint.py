"""Checkpoint files: atomic writes, rotation, corruption detected and skipped."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from qkvlab.config import Config
from qkvlab.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
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


def test_truncated_file_without_checksum_is_still_detected(tmp_path):
    latest = write_checkpoint(tmp_path, 20, state(2.0), keep=3)
    Path(str(latest) + ".sum").unlink()
    latest.write_bytes(latest.read_bytes()[:500])
    said = []
    assert list(good_checkpoints(tmp_path, say=said.append)) == []
    assert "unreadable" in said[0]


def test_disk_full_keeps_previous_and_says_so(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to produce a real ENOSPC")
    previous = write_checkpoint(tmp_path, 10, state(1.0), keep=1)
    # The temporary file of the next write is a link to /dev/full: the kernel answers ENOSPC.
    (tmp_path / "checkpoints" / "step_00000020.pt.tmp").symlink_to("/dev/full")
    with pytest.raises(CheckpointWriteError) as err:
        write_checkpoint(tmp_path, 20, state(2.0), keep=1)
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    message = str(err.value)
    assert "no space left on device" in message and f"the previous checkpoint {previous} is kept" in message
    assert "\n" not in message
    assert [s for s, _ in step_checkpoints(tmp_path)] == [10] and read_checkpoint(previous)["step"] == 10
    assert not list(tmp_path.rglob("*.tmp"))


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
