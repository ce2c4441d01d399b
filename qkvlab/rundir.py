"""The one run-directory reader. Every tool that looks at results (compare,
eval, scaling) reads runs through here, never through W&B."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf

from qkvlab.config import flatten


@dataclass
class Run:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    # Why summary.json could not be read (empty, torn, not JSON); None when it could or is absent.
    unreadable: str | None = None

    @property
    def status(self) -> str:
        return "unreadable" if self.unreadable else self.summary.get("status", "unfinished")

    @property
    def finished(self) -> bool:
        return self.status == "completed"

    @cached_property
    def config(self) -> dict[str, Any]:
        path = self.path / ".hydra" / "config.yaml"
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else {}

    @cached_property
    def run_id(self) -> str | None:
        """The id chosen once per run directory (run.json's `wandb_id`); `cp -r` copies it, a re-run does not."""
        try:
            meta = json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError):
            return None
        value = meta.get("wandb_id") if isinstance(meta, dict) else None
        return str(value) if value else None

    @property
    def error(self) -> str:
        return self.unreadable or str(self.summary.get("error", ""))

    @cached_property
    def flat_config(self) -> dict[str, Any]:
        """The run's config as dotted keys (`optim.lr`), for grouping runs by what differs."""
        return flatten(self.config)

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a killed run
        return rows

    def series(self, key: str) -> list[tuple[int, int, float]]:
        """(step, tokens, value) for every logged point that has `key`."""
        return [(r["step"], r["tokens"], r[key]) for r in self.metrics if key in r]


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").exists() or (path / "metrics.jsonl").exists() or (path / ".hydra" / "config.yaml").exists()


def load_run(path: Path | str) -> Run:
    path = Path(path)
    summary_path = path / "summary.json"
    if not summary_path.exists():
        return Run(path=path)
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return Run(path=path, unreadable=f"{summary_path} is unreadable ({_reason(exc)}); delete it and re-run the job to redo it")
    if not isinstance(summary, dict):
        return Run(path=path, unreadable=f"{summary_path} is not a JSON object; delete it and re-run the job to redo it")
    return Run(path=path, summary=summary)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return "empty" if not exc.doc.strip() else f"not valid JSON at line {exc.lineno}"
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def find_runs(paths: Iterable[Path | str]) -> list[Run]:
    """Run directories at, or anywhere below, each path or glob (sweep directories included)."""
    found: dict[Path, None] = {}
    for pattern in paths:
        matches = [Path(p) for p in glob.glob(str(pattern))] or [Path(pattern)]
        for root in matches:
            if is_run_dir(root):
                found[root.resolve()] = None
            for marker in sorted(root.rglob(".hydra")):
                if marker.is_dir() and is_run_dir(marker.parent):
                    found[marker.parent.resolve()] = None
    return [load_run(p) for p in found]
