"""`pip install .` must give a working qkvlab: the wheel carries its Hydra configs.

The wheel is built from a copy of the checkout, installed into a fresh virtual
environment, and run from a directory outside the checkout, with nothing on
PYTHONPATH, so only what the wheel holds can be found. The new environment
borrows this one's dependencies (torch, Hydra, W&B) through a .pth line instead
of downloading them; a plain path line does not run this environment's own .pth
files, so an editable qkvlab installed here stays invisible there.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, qkvlab_env

pytestmark = pytest.mark.slow

NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "wandb", "multirun"
)
TINY = ["model=tiny", "data=sort", "data.seq_len=16", "data.batch_size=8", "data.val_size=32",
        "train.steps=4", "train.eval_every=2", "train.log_every=2", "train.progress=false", "logger=none"]


def _run(args: list, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[:4]} failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-3000:]}"
    return proc


def _venv_with_this_ones_packages(where: Path) -> Path:
    _run([sys.executable, "-m", "venv", "--without-pip", where], cwd=where.parent)
    python = where / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=where).stdout.strip()
    Path(purelib, "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def test_the_wheel_installs_and_trains_outside_the_checkout(tmp_path):
    source, wheels, work = tmp_path / "src", tmp_path / "wheels", tmp_path / "work"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, source], cwd=tmp_path)
    (wheel,) = wheels.glob("qkvlab-*.whl")
    python = _venv_with_this_ones_packages(tmp_path / "venv")
    # --no-index and no --no-deps: the wheel's dependencies must resolve to what is already here.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index", wheel], cwd=tmp_path)

    work.mkdir()
    env = qkvlab_env(work)
    env.pop("PYTHONPATH")
    env.update(OMP_NUM_THREADS="1")
    qkvlab = tmp_path / "venv" / "bin" / "qkvlab"
    where = _run([python, "-c", "import qkvlab; print(qkvlab.__file__)"], cwd=work, env=env).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where

    shown = _run([qkvlab, "train", "--cfg", "job", "variant=k_eq_v"], cwd=work, env=env)
    assert "sharing: k_eq_v" in shown.stdout

    # A config directory of the user's own: a preset that names its study.
    mine = work / "my_conf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "my_study.yaml").write_text("# @package _global_\nname: my_study\ntrain:\n  steps: 4\n")
    trained = _run([qkvlab, "train", "--config-dir", work / "my_conf", "experiment=my_study", *TINY], cwd=work, env=env)
    (run_dir,) = [p.parent for p in (work / "outputs" / "my_study").glob("*/summary.json")]
    assert '"status": "completed"' in (run_dir / "summary.json").read_text(), trained.stdout
