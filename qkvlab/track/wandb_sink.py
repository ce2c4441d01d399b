"""Weights & Biases as a metrics sink. metrics.jsonl stays the source of truth;
W&B is for browsing, so its trouble must never kill training."""

from __future__ import annotations

import netrc
import os
import shlex
import socket
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

from qkvlab.errors import error_line
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


def server_unreachable(timeout: float = 3.0) -> str | None:
    """Why the W&B server cannot be reached, or None; a quick TCP probe so an offline
    machine falls back in seconds instead of waiting out W&B's own retries."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None  # only the proxy knows; let W&B try
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return f"{url.hostname}:{port} is unreachable ({exc.strerror or type(exc).__name__})"
    return None


def unsynced_offline_runs(run_dir: Path) -> list[Path]:
    """A run directory's offline W&B runs that `wandb sync` has not uploaded yet (it marks those it has
    with a `.wandb.synced` file); a resumed run can hold several, each with part of its history."""
    return [
        d for d in sorted(Path(run_dir, "wandb").glob("offline-run-*"))
        if any(d.glob("*.wandb")) and not any(d.glob("*.wandb.synced"))
    ]


def sync_command(offline_runs: Sequence[Path]) -> str:
    """One `wandb sync` line for all of them, with paths relative to the working directory where they lie under it."""
    here = Path.cwd().resolve()
    paths = [str(p.resolve().relative_to(here)) if p.resolve().is_relative_to(here) else str(p.resolve()) for p in offline_runs]
    return " ".join(["wandb", "sync", *map(shlex.quote, paths)])


class WandbSink:
    """Online falls back to offline, offline to nothing; each fallback is said once, and
    an error while logging turns the sink off rather than stopping the run."""

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
        run_id: str | None = None,
        tags: Sequence[str] = (),
        announce_offline: bool = True,
    ):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run = None
        self.kwargs = dict(
            project=lg.project,
            entity=lg.entity,
            group=group,
            job_type=job_type,
            name=name,
            tags=list(dict.fromkeys([*lg.tags, *tags])),
            config=config,
            dir=str(run_dir),
            id=run_id,
            resume="allow" if run_id else None,
            reinit="finish_previous",
        )
        if mode == "online":
            why = server_unreachable()
            if why is None:
                try:
                    self._start("online")
                except Exception as exc:
                    why = error_line(exc, 160)
                    self._teardown()
            if why is not None:
                mode = "offline"
                self._start("offline")
                print(f"qkvlab: W&B online failed ({why}); fell back to offline, upload later with: wandb sync {self.offline_dir}", flush=True)
        else:
            self._start(mode)
            if mode == "offline" and announce_offline:
                print(f"qkvlab: W&B is offline; upload later with: wandb sync {self.offline_dir}", flush=True)

    def _start(self, mode: str) -> None:
        settings = {} if os.environ.get("WANDB_INIT_TIMEOUT") else {"init_timeout": 60}
        self.run = self._wandb.init(mode=mode, settings=self._wandb.Settings(**settings), **self.kwargs)

    def _teardown(self) -> None:
        try:
            self._wandb.teardown()
        except Exception:
            pass
        self.run = None

    @property
    def offline_dir(self) -> str:
        return self.run.dir.rsplit("/files", 1)[0]

    def _guard(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as exc:
            print(f"qkvlab: W&B failed while {what} ({error_line(exc, 160)}); W&B is off for this run, metrics.jsonl keeps everything", flush=True)
            self._teardown()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._guard("logging", lambda: self.run.log(metrics, step=step))

    def summary(self, summary: dict[str, Any]) -> None:
        self._guard(
            "writing the summary",
            lambda: self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}),
        )

    def close(self, failed: bool) -> None:
        self._guard("finishing", lambda: self.run.finish(exit_code=1 if failed else 0))
        self.run = None
