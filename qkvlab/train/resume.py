"""Where a run starts: fresh, or from a checkpoint, with the run directory made
consistent with that point.

A resumed run rewinds metrics.jsonl to the checkpoint's step (rows logged after
it by the interrupted attempt are dropped, the resumed run logs them again),
so the file never holds a step twice and ends identical to an uninterrupted
run's. `run.json` holds what must outlive one process: the format version of
the run directory and the W&B run id that a resumed run continues.
"""

from __future__ import annotations

import json
import secrets
import string
from pathlib import Path
from typing import Any, Callable, Optional

from qkvlab import __version__
from qkvlab.config import FORMAT_VERSION
from qkvlab.errors import ConfigError
from qkvlab.rundir import RUN_FILE, read_metrics, read_run_meta
from qkvlab.files import write_json_atomic, write_text_atomic
from qkvlab.train.checkpoint import (
    CHECKPOINTS,
    SHARDED,
    CheckpointError,
    CorruptCheckpoint,
    check_resumable,
    good_checkpoints,
    read_checkpoint,
    remove_checkpoint,
    step_checkpoints,
    version_problem,
)

METRICS = "metrics.jsonl"


def new_run_id() -> str:
    """A W&B-style run id (8 of [a-z0-9]), chosen by qkvlab so it can be stored before W&B starts."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def read_run_file(run_dir: Path) -> dict[str, Any]:
    meta, problem = read_run_meta(run_dir)
    if problem:
        raise ConfigError(f"{problem}; delete it to start this run directory afresh")
    if not (Path(run_dir) / RUN_FILE).exists():
        return {}
    problem = version_problem(f"run directory {run_dir}", meta.get("format_version", 0), "train in a new run directory")
    if problem:
        raise ConfigError(problem)
    return meta


def write_run_file(run_dir: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / RUN_FILE, {**meta, "format_version": FORMAT_VERSION, "qkvlab_version": __version__})


def rewind_metrics(run_dir: Path, step: int, source: Optional[Path] = None, say: Callable[[str], None] = print) -> bool:
    """Keep metrics.jsonl rows up to `step`; a run resumed from another run's checkpoint starts with that run's rows.
    A malformed line is named and left out, never the rows after it. Whether the run had rows before."""
    run_dir = Path(run_dir)
    target = run_dir / METRICS
    rows, problems = read_metrics(target)
    if not rows and source is not None and source.resolve() != run_dir.resolve():
        rows, problems = read_metrics(source / METRICS)
    for problem in problems:
        say(f"qkvlab: {problem}")
    kept = [r for r in rows if r.get("step", 0) <= step]
    if not target.exists() and not kept:
        return bool(rows)
    write_text_atomic(target, "".join(json.dumps(r) + "\n" for r in kept))
    return bool(rows)


def clear_checkpoints(run_dir: Path) -> int:
    folder = Path(run_dir) / CHECKPOINTS
    removed = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if p.suffix in (".pt", ".sum", ".tmp", SHARDED):
                remove_checkpoint(p)
                removed += p.suffix in (".pt", SHARDED)
    return removed


def drop_checkpoints_after(run_dir: Path, step: int) -> None:
    """Checkpoints past the resume point are damaged or from an abandoned attempt; left in place they
    would take the newest slots of the rotation and be resumed from after the next crash."""
    for s, p in step_checkpoints(run_dir):
        if s > step:
            remove_checkpoint(p)


def remove_temporaries(run_dir: Path) -> None:
    """Temporaries of a write that a SIGKILL cut short; the files they were to replace are intact."""
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        if folder.is_dir():
            for p in folder.glob("*.tmp"):
                remove_checkpoint(p)


def restore(trainer, run_dir: Path, say: Callable[[str], None] = print) -> Optional[Path]:
    """Load the checkpoint `train.resume` asks for into `trainer`; the checkpoint used, or None for a fresh start.

    Checked against `trainer.cfg`, the config the run trains with (train.steps resolved
    from train.tokens_per_param), which is also what its checkpoints record."""
    run_dir = Path(run_dir)
    cfg = trainer.cfg
    mode = cfg.train.resume
    remove_temporaries(run_dir)
    if mode == "never":
        removed = clear_checkpoints(run_dir)
        if removed:
            say(f"qkvlab: train.resume=never: removed {removed} old checkpoint(s) from {run_dir / CHECKPOINTS}")
        rewind_metrics(run_dir, 0, say=say)
        return None
    if mode == "auto":
        for path, payload in good_checkpoints(run_dir, say):
            return _load(trainer, cfg, run_dir, path, payload, say)
        drop_checkpoints_after(run_dir, -1)
        if rewind_metrics(run_dir, 0, say=say):
            say(f"qkvlab: no loadable checkpoint in {run_dir / CHECKPOINTS}; starting again from step 0")
        return None
    path = Path(mode)
    try:
        payload = read_checkpoint(path)
    except CorruptCheckpoint as exc:
        raise CheckpointError(f"train.resume={mode}: the checkpoint is {exc.verdict()}; pick another checkpoint") from exc
    source = path.resolve().parent.parent if path.resolve().parent.name == CHECKPOINTS else None
    return _load(trainer, cfg, run_dir, path, payload, say, source)


def _load(trainer, cfg, run_dir, path, payload, say, source=None) -> Path:
    check_resumable(payload, cfg, path)
    step = payload["step"]
    if step > cfg.train.steps:
        raise CheckpointError(
            f"{path} is at step {step}, beyond train.steps={cfg.train.steps}; raise train.steps or use train.resume=never"
        )
    trainer.load_state_dict(payload, path)
    drop_checkpoints_after(run_dir, step)
    rewind_metrics(run_dir, step, source, say)
    say(f"qkvlab: resuming from {path} (step {step} of {cfg.train.steps})")
    return path
