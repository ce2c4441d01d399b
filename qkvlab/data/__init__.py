"""Data sources by task name; `build_data` is the one entry point."""

from __future__ import annotations

from qkvlab.data.keys import check_keys
from qkvlab.data.source import IGNORE, MISSING, Batch, DataSource, check_same_data
from qkvlab.data.synthetic import SYNTHETIC_TASKS, SyntheticTask, check_synthetic
from qkvlab.data.text import TextData, check_text

TASKS = {**{name: SyntheticTask for name in SYNTHETIC_TASKS}, "text": TextData}


def check_data(cfg) -> None:
    """The data source's own checks, run at start-up with every other check (qkvlab/checks.py)."""
    from qkvlab.errors import ConfigError

    if cfg.data.task not in TASKS:
        raise ConfigError(f"data.task={cfg.data.task!r} is not valid; choose one of: {', '.join(TASKS)}")
    check_keys(cfg.data, synthetic=cfg.data.task in SYNTHETIC_TASKS)
    if cfg.data.task in SYNTHETIC_TASKS:
        check_synthetic(cfg.data)
    elif cfg.data.task == "text":
        check_text(cfg.data)


def build_data(cfg) -> DataSource:
    return TASKS[cfg.data.task](cfg)


__all__ = ["IGNORE", "MISSING", "Batch", "DataSource", "TASKS", "build_data", "check_data", "check_same_data"]
