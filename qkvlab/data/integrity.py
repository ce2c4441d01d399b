"""Cache entries checked before they are trusted.

A token-cache entry records, at build, each shard's size and CRC32, the CRC32
of the whole token stream (the entry's content checksum, which a run keeps as
the identity of its data) and the largest token id. Opening an entry checks
what a stat can (every shard there, of the size meta.json says, ids below the
vocabulary); the checksums are verified once per state of the files: the
first open by a process reads the shards (CRC32 runs at gigabytes a second),
and `verified.json` remembers the shards' sizes and modification times, so a
later open re-reads them only if a file changed. Overwriting bytes changes the
modification time, so it is caught at the next open.

A damaged entry is reported in one line that names it and says to delete it:
the cache rebuilds what is missing, so deletion is always the fix.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from qkvlab.errors import ConfigError

CHUNK = 1 << 24
MARKER = "verified.json"
_verified: dict[str, list] = {}


class DamagedCache(ConfigError):
    """A cache entry whose files do not match what its builder recorded."""


def damaged(what: str, path: Path, detail: str) -> DamagedCache:
    return DamagedCache(f"{what} {path} is damaged ({detail}); delete that directory to rebuild it")


def file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def shard_sums(root: Path, shards: list[dict[str, Any]], dtype: np.dtype) -> tuple[list[int], int, int]:
    """(CRC32 of each shard, CRC32 of the whole stream, largest id) in one read of the shards."""
    crcs, stream, top = [], 0, -1
    for s in shards:
        crc = 0
        with open(root / s["file"], "rb") as f:
            while chunk := f.read(CHUNK - CHUNK % dtype.itemsize):
                crc, stream = zlib.crc32(chunk, crc), zlib.crc32(chunk, stream)
                ids = np.frombuffer(chunk[: len(chunk) - len(chunk) % dtype.itemsize], dtype=dtype)
                if len(ids):
                    top = max(top, int(ids.max()))
        crcs.append(crc)
    return crcs, stream, top


def read_meta(path: Path, what: str, required: tuple[str, ...]) -> dict[str, Any]:
    """meta.json of an entry, or DamagedCache saying what is wrong with it."""
    try:
        text = (path / "meta.json").read_text()
    except OSError as exc:
        raise damaged(what, path, f"meta.json is unreadable: {exc.strerror or exc}") from None
    if not text.strip():
        raise damaged(what, path, "meta.json is empty")
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise damaged(what, path, f"meta.json is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise damaged(what, path, "meta.json is not a JSON object")
    missing = [k for k in required if k not in meta]
    if missing:
        raise damaged(what, path, f"meta.json lacks '{missing[0]}'")
    return meta


def _stat_key(path: Path, names: list[str]) -> list:
    key = []
    for name in names:
        try:
            st = (path / name).stat()
        except OSError:
            return []
        key.append([name, st.st_size, st.st_mtime_ns])
    return key


def _marker(path: Path) -> list:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return []


def _remember(path: Path, key: list) -> None:
    _verified[str(path)] = key
    tmp = path / f".{MARKER}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(key))
        os.replace(tmp, path / MARKER)
    except OSError:  # a read-only shared cache: verify again next time
        tmp.unlink(missing_ok=True)


def check_token_entry(path: Path, meta: dict[str, Any], what: str = "token cache") -> None:
    """Every shard present with the size meta.json records, the ids within the vocabulary,
    and (once per state of the files) the checksums."""
    try:
        dtype = np.dtype(meta["dtype"])
        shards = [(str(s["file"]), int(s["tokens"]), int(s["crc32"])) for s in meta["shards"]]
        n_tokens, vocab, max_id = int(meta["n_tokens"]), int(meta["vocab_size"]), int(meta["max_id"])
        eot, checksum = int(meta["eot"]), str(meta["checksum"])
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(what, path, f"meta.json has a missing or malformed entry: {exc}") from None
    if sum(t for _, t, _ in shards) != n_tokens:
        raise damaged(what, path, f"meta.json says {n_tokens:,} tokens but lists shards of {sum(t for _, t, _ in shards):,}")
    for name, tokens, _ in shards:
        file = path / name
        if not file.is_file():
            raise damaged(what, path, f"{name} is missing")
        size, want = file.stat().st_size, tokens * dtype.itemsize
        if size != want:
            raise damaged(what, path, f"{name}: {size:,} of {want:,} bytes")
    if max(max_id, eot) >= vocab:
        raise damaged(what, path, f"token id {max(max_id, eot)} is outside the vocabulary of {vocab}")
    names = [name for name, _, _ in shards] + ["meta.json"] + (["tokenizer.json"] if (path / "tokenizer.json").exists() else [])
    key = _stat_key(path, names)
    if key and (_verified.get(str(path)) == key or _marker(path) == key):
        return
    crcs, stream, top = shard_sums(path, [{"file": n} for n, _, _ in shards], dtype)
    for (name, _, want), got in zip(shards, crcs):
        if got != want:
            raise damaged(what, path, f"{name}: checksum {got:08x}, expected {want:08x}")
    if f"{stream:08x}" != checksum:
        raise damaged(what, path, f"the token stream's checksum is {stream:08x}, meta.json says {checksum}")
    if top != max_id:
        raise damaged(what, path, f"meta.json says the largest id is {max_id}, the shards hold {top}")
    if "tokenizer_crc32" in meta:
        check_file(path, "tokenizer.json", meta["tokenizer_crc32"], what)
    _remember(path, key)


def check_file(path: Path, name: str, crc: int, what: str) -> None:
    file = path / name
    if not file.is_file():
        raise damaged(what, path, f"{name} is missing")
    got = file_crc(file)
    if got != crc:
        raise damaged(what, path, f"{name}: checksum {got:08x}, expected {int(crc):08x}")
