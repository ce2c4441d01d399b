"""The one run-directory reader. Every tool that looks at results (compare,
eval, scaling) reads runs through here, never through W&B."""

from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf

from qkvlab.config import flatten
from qkvlab.runlock import is_held


RUN_FILE = "run.json"
EVAL_FILE = "eval.json"


def read_run_meta(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """run.json's contents ({} when absent) and why it could not be read, if it could not."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return {}, None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, f"{path} is unreadable ({exc})"
    if not isinstance(meta, dict):
        return {}, f"{path} is unreadable (not a JSON object)"
    return meta, None


@dataclass
class Run:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    # Why summary.json could not be read (empty, torn, not JSON); None when it could or is absent.
    unreadable: str | None = None

    @property
    def status(self) -> str:
        """`running` only while a process holds the directory; a run killed while running is `unfinished`."""
        if self.unreadable:
            return "unreadable"
        status = self.summary.get("status", "unfinished")
        return "unfinished" if status == "running" and not is_held(self.path) else status

    @property
    def finished(self) -> bool:
        return self.status == "completed"

    @cached_property
    def config(self) -> dict[str, Any]:
        path = self.path / ".hydra" / "config.yaml"
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else {}
        if isinstance(config.get("experiment"), str) and "name" not in config:  # saved before `name` took the key
            config["name"] = config.pop("experiment")
        return config

    @cached_property
    def run_id(self) -> str | None:
        """The id chosen once per run directory (run.json's `wandb_id`); `cp -r` copies it, a re-run does not."""
        meta, _ = read_run_meta(self.path)
        value = meta.get("wandb_id")
        return str(value) if value else None

    @cached_property
    def evaluation(self) -> dict[str, Any]:
        """eval.json (what `qkvlab eval` wrote: `results` per context, `tasks` per benchmark); {} when absent or torn."""
        path = self.path / EVAL_FILE
        try:
            report = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, UnicodeDecodeError, ValueError):
            print(f"qkvlab: warning: {path} is unreadable; ignoring it (qkvlab eval rewrites it)", file=sys.stderr, flush=True)
            return {}
        return report if isinstance(report, dict) else {}

    @property
    def error(self) -> str:
        return self.unreadable or str(self.summary.get("error", ""))

    @cached_property
    def flat_config(self) -> dict[str, Any]:
        """The run's config as dotted keys (`optim.lr`), for grouping runs by what differs."""
        return flatten(self.config)

    @cached_property
    def _metrics_file(self) -> tuple[list[dict[str, Any]], list[str]]:
        rows, problems = read_metrics(self.path / "metrics.jsonl")
        for problem in problems:
            print(f"qkvlab: warning: {problem}", file=sys.stderr, flush=True)
        return rows, problems

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Every valid row of metrics.jsonl; a malformed line is skipped and reported once (`metrics_problems`)."""
        return self._metrics_file[0]

    @property
    def metrics_problems(self) -> list[str]:
        return self._metrics_file[1]

    def series(self, key: str) -> list[tuple[int, int, float]]:
        """(step, tokens, value) for every logged point that has `key`."""
        return [(r["step"], r["tokens"], r[key]) for r in self.metrics if key in r]


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a metrics.jsonl and one line per malformed line, naming its number.

    A malformed line is skipped, never the end of the file: stopping there would
    drop every valid row after it. A torn last line without its newline is what a
    killed run leaves, so it is dropped without a word."""
    if not path.exists():
        return [], []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    rows, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif number < len(lines):  # the last piece has no newline after it: a torn write
            problems.append(f"{path} line {number} is not a metrics row ({line.strip()[:40]}); skipped")
    return rows, problems


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
