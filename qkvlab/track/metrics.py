"""The one metrics writer: every logged point goes to metrics.jsonl and to the
optional sinks (W&B), under the same names."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from qkvlab.files import write_json_atomic


class Sink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def summary(self, summary: dict[str, Any]) -> None: ...

    def close(self, failed: bool) -> None: ...


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    def __init__(self, run_dir: Path, sinks: list[Sink] | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.sinks = list(sinks or [])
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)

    def log(self, step: int, tokens: int, metrics: dict[str, float]) -> None:
        record = {"step": step, "tokens": tokens, **{k: _clean(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.log(step, {**metrics, "tokens": tokens})

    def summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.run_dir / "summary.json", {k: _clean(v) for k, v in summary.items()})
        for sink in self.sinks:
            sink.summary(summary)

    def close(self, failed: bool = False) -> None:
        self._jsonl.close()
        for sink in self.sinks:
            sink.close(failed)
