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


@dataclass
class Run:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.summary.get("status", "unfinished")

    @property
    def finished(self) -> bool:
        return self.status == "completed"

    @cached_property
    def config(self) -> dict[str, Any]:
        path = self.path / ".hydra" / "config.yaml"
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else {}

    @property
    def error(self) -> str:
        return str(self.summary.get("error", ""))

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


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").exists() or (path / "metrics.jsonl").exists() or (path / ".hydra" / "config.yaml").exists()


def load_run(path: Path | str) -> Run:
    path = Path(path)
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return Run(path=path, summary=summary)


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
