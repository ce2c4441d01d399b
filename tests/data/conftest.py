from __future__ import annotations

import json
from pathlib import Path

import pytest

from qkvlab.checks import checked
from qkvlab.config import Config, DataConfig


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Token cache and the `datasets` Arrow cache inside tmp_path; no hub access."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("QKVLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _make_docs(n: int = 60, words: int = 30) -> list[str]:
    """Documents that each carry a unique marker, so a test can tell where text went."""
    return [f"doc{i:04d} " + " ".join(f"w{(i * 7 + k) % 50}" for k in range(words)) + "." for i in range(n)]


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(docs)))
    return path


def _text_config(path: Path | str | None = None, **data) -> Config:
    cfg = Config()
    cfg.data = DataConfig(**{"name": "text", "task": "text", "causal": True, "path": str(path) if path else None,
                             "seq_len": 16, "batch_size": 8, "val_tokens": 256, **data})
    cfg.model.context = max(cfg.model.context, cfg.data.seq_len)
    cfg.train.progress = False
    checked(cfg)
    return cfg


@pytest.fixture
def make_docs():
    return _make_docs


@pytest.fixture
def write_jsonl():
    return _write_jsonl


@pytest.fixture
def text_config():
    return _text_config
