"""The end of a sweep: a table of the jobs that did not complete, and why; one command that uploads its offline W&B runs.

Read from the run directories (summary.json), so it works the same for every
Hydra launcher, jobs run in other processes or on other machines included.
The sweep directory (outputs/<name>) also holds the runs of earlier
sweeps; this sweep's jobs are those Hydra wrote a config for since it began.
A job refused before it may write its run directory (another process holds it,
or it was trained with another config) leaves a note in the sweep directory's
`.qkvlab-refused/` instead, which the report reads and removes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qkvlab.files import write_json_atomic
from qkvlab.rundir import Run, find_runs
from qkvlab.track.wandb_sink import sync_command, unsynced_offline_runs

_failed: list[Run] = []
REFUSED = ".qkvlab-refused"


def sweep_failed() -> bool:
    """Whether the sweep that just ended in this process had jobs that did not complete."""
    return bool(_failed)


def failure_table(runs: list[Run], root: Path) -> str:
    rows = [(str(r.path.relative_to(root)) if r.path.is_relative_to(root) else str(r.path), r.status, r.error) for r in runs]
    width = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(("job", "status"))]
    lines = [f"  {'job':<{width[0]}}  {'status':<{width[1]}}  error"]
    lines += [f"  {job:<{width[0]}}  {status:<{width[1]}}  {error}" for job, status, error in rows]
    return "\n".join(lines)


def _written_since(run: Run, started: float) -> bool:
    config = run.path / ".hydra" / "config.yaml"
    return config.exists() and config.stat().st_mtime >= started


def record_refused(sweep_dir: Path, run_dir: Path, status: str, error: str) -> None:
    """Note a job that did not touch its run directory, for the report at the end of the sweep."""
    folder = Path(sweep_dir) / REFUSED
    folder.mkdir(parents=True, exist_ok=True)
    note = {"path": str(Path(run_dir).resolve()), "status": status, "error": error}
    write_json_atomic(folder / f"{os.getpid()}-{time.time_ns()}.json", note)


def _refused_since(root: Path, started: float) -> list[Run]:
    folder = root / REFUSED
    runs = []
    for note in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            if note.stat().st_mtime >= started:
                info = json.loads(note.read_text())
                runs.append(Run(path=Path(info["path"]), summary={"status": info["status"], "error": info["error"]}))
        except (OSError, ValueError, KeyError):
            pass
        note.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return runs


class FailedJobsReport(Callback):
    started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _failed.clear()
        self.started = time.time() - 1.0  # file systems with coarse timestamps

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir).resolve()
        runs = sorted((r for r in find_runs([root]) if _written_since(r, self.started)), key=lambda r: str(r.path))
        refused = _refused_since(root, self.started)
        seen = {r.path for r in refused}
        runs = [r for r in runs if r.path not in seen] + refused
        bad = [r for r in runs if not r.finished]
        _failed[:] = bad
        if not bad:
            print(f"qkvlab: all {len(runs)} jobs completed ({root})", flush=True)
        else:
            print(f"qkvlab: {len(bad)} of {len(runs)} jobs did not complete ({root}):\n{failure_table(bad, root)}", flush=True)
        offline = [d for r in runs for d in unsynced_offline_runs(r.path)]
        if offline:
            print(f"qkvlab: W&B is offline; upload this sweep's {len(offline)} runs with: {sync_command(offline)}", flush=True)
