"""Weights & Biases as a metrics sink. metrics.jsonl stays the source of truth;
W&B is for browsing, so its trouble must never kill training."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from qkvlab.config import LoggerConfig


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(lg: LoggerConfig) -> str:
    """`auto`: online with credentials, offline without (then `wandb sync` uploads later)."""
    if lg.backend == "none":
        return "disabled"
    if lg.mode == "auto":
        return "online" if has_credentials() else "offline"
    return lg.mode


class WandbSink:
    def __init__(
        self,
        lg: LoggerConfig,
        run_dir: Path,
        *,
        name: str,
        group: str,
        job_type: str,
        config: dict[str, Any],
        mode: str,
    ):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=lg.project,
            entity=lg.entity,
            group=group,
            job_type=job_type,
            name=name,
            tags=list(lg.tags),
            config=config,
            dir=str(run_dir),
            mode=mode,
            reinit="finish_previous",
        )
        self.mode = mode
        if mode == "offline":
            print(f"qkvlab: W&B is offline (no credentials); upload later with: wandb sync {self.run.dir.rsplit('/files', 1)[0]}")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)
