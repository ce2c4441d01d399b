"""A local corpus whose files are gone still trains from its token cache.

The cache key holds the files' sizes and modification times, which cannot be
read once the files are gone, so the entry is found by what its meta.json
records instead: the same label, corpus path (a file, or files under a
directory), text field, split, tokenizer settings and data.max_tokens.
When several entries match (the corpus was edited between builds), the newest
is used: it is the corpus as it was last read, the line printed says which
one, and a run that trained on another is refused by the corpus check
(qkvlab/data/source.py check_same_data), so no run mixes two versions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qkvlab.config import DataConfig
from qkvlab.data import corpus, tokenizer
from qkvlab.data.cache import cache_root
from qkvlab.data.integrity import DamagedCache, read_meta


def path_missing(d: DataConfig) -> bool:
    return d.path is not None and not Path(d.path).expanduser().exists()


def _matches(meta: dict[str, Any], d: DataConfig, label: str, root: str, cache_format: int) -> bool:
    ident = meta.get("identity") or {}
    corp = ident.get("corpus") or {}
    files = [f[0] for f in corp.get("files") or []]
    return (
        meta.get("format") == cache_format
        and meta.get("label") == label
        and meta.get("max_tokens") == d.max_tokens
        and bool(files)
        and all(f == root or f.startswith(root.rstrip("/") + "/") for f in files)
        and (corp.get("text_field"), corp.get("split")) == (d.text_field, d.split)
        and ident.get("tokenizer") == tokenizer.identity(d, corp)
    )


def cached_entries(d: DataConfig, label: str, cache_format: int) -> list[tuple[Path, dict[str, Any]]]:
    """Complete token-cache entries built from data.path with these settings, newest first."""
    root = str(Path(d.path).expanduser().resolve())
    found = []
    for meta_file in (cache_root() / "tokens").glob("*/meta.json"):
        try:
            meta = read_meta(meta_file.parent, "token cache", ())
        except DamagedCache:
            continue
        if _matches(meta, d, label, root, cache_format):
            found.append((meta_file.stat().st_mtime, meta_file.parent, meta))
    return [(path, meta) for _, path, meta in sorted(found, key=lambda f: f[0], reverse=True)]


def describe_choice(d: DataConfig, entries: list[tuple[Path, dict[str, Any]]]) -> str:
    path, meta = entries[0]
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime((path / "meta.json").stat().st_mtime))
    others = f"; {len(entries) - 1} older cache(s) of it ignored" if len(entries) > 1 else ""
    return (f"qkvlab: data.path={d.path} does not exist; using its token cache {path} "
            f"({meta.get('n_tokens', 0):,} tokens, built {built}){others}")


def label_of(d: DataConfig) -> str:
    return f"{corpus.label(d)}-{d.tokenizer if d.tokenizer != 'bpe' else f'bpe{d.bpe_vocab_size}'}"
