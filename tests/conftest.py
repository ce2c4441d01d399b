from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture
def shakespeare() -> Path:
    if not SHAKESPEARE.exists():
        pytest.skip(f"{SHAKESPEARE} is absent (it ships beside the repo only in the qkvlab workspace)")
    return SHAKESPEARE


def qkvlab_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a CLI subprocess: offline W&B, caches inside tmp_path."""
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(tmp_path),
        WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
        HF_HOME=str(tmp_path / "hf"),
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        QKVLAB_CACHE=str(tmp_path / "cache"),
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.pop("WANDB_API_KEY", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture
def start_cli(tmp_path):
    """Start `qkvlab ...` in the background (for tests that signal or kill it); returns the Popen."""

    def _start(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "qkvlab.cli", *args],
            cwd=tmp_path,
            env={**qkvlab_env(tmp_path), **(env_extra or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return _start


@pytest.fixture
def run_cli(tmp_path):
    """Run `qkvlab ...` in a subprocess with cwd=tmp_path; returns CompletedProcess."""

    def _run(*args: str, timeout: float = 600, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = qkvlab_env(tmp_path)
        env.update(env_extra or {})
        return subprocess.run(
            [sys.executable, "-m", "qkvlab.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return _run


@pytest.fixture
def run_command(tmp_path):
    """Run a printed command line (argv) as a user would, with cwd=tmp_path and the CLI tests' environment."""

    def _run(argv: list[str], timeout: float = 120, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = {**qkvlab_env(tmp_path), **(env_extra or {})}
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    return _run


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def torchrun(tmp_path):
    """Run `torchrun --nproc_per_node=N ARGS...` (python -m torch.distributed.run) with cwd=tmp_path;
    with background=True, start it and return the Popen (for tests that signal a rank)."""

    def _run(args: list[str], nproc: int = 2, timeout: float = 120, background: bool = False):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}", *args]
        env = {**qkvlab_env(tmp_path), "OMP_NUM_THREADS": "1"}
        if background:
            return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    return _run
