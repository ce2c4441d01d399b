"""A text run trained in-process for a few steps: a real run directory (config, final checkpoint, token
cache) without a subprocess, for the tests that read trained runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qkvlab.config import as_dict
from tests.helpers import make_config

# A corpus with words and spaces, so a BPE tokenizer has merges to make.
CORPUS = "".join(f"the {w} sat on the mat. a {w} saw {n} birds.\n" for n in range(40) for w in ("cat", "dog", "fox"))
TEXT_RUN = ["model=tiny", "logger=none", "train.progress=false", "data.seq_len=32", "data.batch_size=4",
            "data.val_tokens=256", "train.steps=3", "train.eval_every=3", "train.device=cpu", "train.precision=fp32"]


def train_text_run(root: Path, *overrides: str) -> Path:
    from qkvlab.train.run import run

    corpus = root / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(CORPUS)
    cfg = make_config("data=text", f"data.path={corpus}", *TEXT_RUN, *overrides)
    run_dir = root / ("run-" + "-".join(o.replace("=", "_").replace("/", "_") for o in overrides))
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(as_dict(cfg)), run_dir / ".hydra" / "config.yaml")
    run(cfg, run_dir)
    return run_dir


@pytest.fixture
def text_run(tmp_path, monkeypatch):
    """Factory: train_text_run(overrides...) -> run directory, caches under tmp_path."""
    monkeypatch.setenv("QKVLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return lambda *overrides: train_text_run(tmp_path, *overrides)
