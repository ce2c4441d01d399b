"""Where the documents come from: one `datasets.load_dataset` path for hub and local corpora.

A hub corpus is `load_dataset(data.hub, data.hub_config, split=...)`; local files
go through the library's own builders (`text`, `json`, `parquet`) with
`data_files`, so both are read, streamed and cached the same way. A .txt file
is one document (packing separates documents, not lines); a .jsonl/.parquet
row, or a hub row, is one document.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from qkvlab.config import DataConfig
from qkvlab.errors import ConfigError

BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
REPLACEMENT = "\ufffd"
_REPLACEMENT_BYTES = REPLACEMENT.encode()
# Long documents are handed to the tokenizer in pieces of about this many characters.
PIECE_CHARS = 1 << 18


def local_files(path: str, key: str = "data.path") -> list[Path]:
    """The corpus files named by data.path (a file, or a directory searched recursively); `key` names the
    setting in messages (data.val_path reads files the same way)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"{key}={path} does not exist; point {key} at a .txt, .jsonl or .parquet file or a directory of them")
    if root.is_file():
        if root.suffix.lower() not in BUILDERS:
            raise ConfigError(f"{key}={path} has an unsupported type '{root.suffix}'; use one of: {', '.join(sorted(BUILDERS))}")
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS and not p.name.startswith("."))
        if not files:
            raise ConfigError(f"{key}={path} holds no corpus files; add files ending in one of: {', '.join(sorted(BUILDERS))}")
    builders = {BUILDERS[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        raise ConfigError(f"{key}={path} mixes file types ({', '.join(sorted(builders))}); point {key} at one type")
    if sum(p.stat().st_size for p in files) == 0:
        raise ConfigError(f"{key}={path} is empty (0 bytes of text); point {key} at a corpus with text in it")
    return [p.resolve() for p in files]


def check_corpus(d: DataConfig, files_needed: bool = True) -> None:
    """Start-up checks that need no reading beyond a stat; `files_needed` False: a token cache stands in for them."""
    if d.path is None and d.hub is None:
        raise ConfigError("data.task=text needs data.path (local files, e.g. data=text data.path=corpus.txt) or data.hub (a Hugging Face dataset name)")
    if d.path is not None and d.hub is not None:
        raise ConfigError(
            f"data.path={d.path} and data.hub={d.hub} are both set; use data=text data.path=... for local files, or data.hub alone"
        )
    if not d.text_field:
        raise ConfigError("data.text_field is empty; name the column that holds the text (usually 'text')")
    if d.path is not None and files_needed:
        local_files(d.path)


def identity(d: DataConfig) -> dict[str, Any]:
    """What makes two corpora the same for the token cache (local files: path, size and mtime)."""
    if d.path is not None:
        stats = [(p, p.stat()) for p in local_files(d.path)]
        files = [(str(p), st.st_size, st.st_mtime_ns) for p, st in stats]
        return {"files": files, "text_field": d.text_field, "split": d.split}
    return {"hub": d.hub, "config": d.hub_config, "split": d.split, "text_field": d.text_field}


def label(d: DataConfig) -> str:
    return Path(d.path).name if d.path is not None else f"{d.hub}-{d.hub_config or ''}-{d.split}"


def total_bytes(corpus_id: dict[str, Any]) -> int | None:
    """A local corpus's size, from its identity: what the tokenizing progress bar counts to."""
    return sum(size for _, size, _ in corpus_id["files"]) if "files" in corpus_id else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """A fast probe, so a missing network fails in seconds rather than after minutes of retries."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let the real request find out
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def go_offline() -> None:
    """Make `datasets` use only its local cache for the rest of this process."""
    import datasets
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True


def load(d: DataConfig, files: list[Path] | None = None):
    """The corpus as a `datasets` (Iterable)Dataset: the one loading path for hub and local text.
    `files`: the local files when the caller listed them already."""
    import datasets

    if d.path is not None:
        files = files or local_files(d.path)
        builder = BUILDERS[files[0].suffix.lower()]
        kwargs: dict[str, Any] = {"data_files": [str(p) for p in files]}
        if builder in ("text", "json"):
            kwargs["encoding_errors"] = "replace"
        if builder == "text":
            kwargs["sample_by"] = "document"
        quiet = not datasets.utils.are_progress_bars_disabled()
        if quiet:
            datasets.utils.disable_progress_bars()  # reading local files is quick; our own bar shows progress
        try:
            return datasets.load_dataset(builder, split=d.split, streaming=d.streaming, **kwargs)
        finally:
            if quiet:
                datasets.utils.enable_progress_bars()
    if not datasets.config.HF_HUB_OFFLINE and not hub_reachable():
        go_offline()
    try:
        return datasets.load_dataset(d.hub, d.hub_config, split=d.split, streaming=d.streaming)
    except (ConnectionError, OSError) as exc:
        if not datasets.config.HF_HUB_OFFLINE and "reach" not in str(exc).lower():
            raise
        raise ConfigError(
            f"data.hub={d.hub} is not cached here and the network (huggingface.co) is unreachable; "
            f"download it once online (HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}), "
            "or point at local files: data=text data.path=/path/to/corpus.txt"
        ) from exc


def split_document(text: str, size: int = PIECE_CHARS) -> list[str]:
    """Cut a long document before line starts, where byte-level BPE splits anyway, so tokens are unchanged."""
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while len(text) - start > size:
        cut = text.rfind("\n", start + 1, start + size)
        while cut != -1 and cut + 1 < len(text) and text[cut + 1].isspace():
            cut = text.rfind("\n", start + 1, cut)
        if cut == -1:
            break  # no safe cut point: keep the rest whole
        pieces.append(text[start : cut + 1])
        start = cut + 1
    pieces.append(text[start:])
    return pieces


def documents(d: DataConfig) -> Iterator[str]:
    """Every document's text, in corpus order; the corpus is opened now, so a missing one fails here."""
    files = local_files(d.path) if d.path is not None else []
    if not files:
        return _texts(load(d, files), d, files)
    # The builders report their own parse errors; each becomes one line of ours (unreadable_file).
    logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)
    try:
        ds = load(d, files)
    except Exception as exc:
        raise unreadable_file(d, files, exc) from exc
    return _named_errors(_texts(ds, d, files), d, files)


def _named_errors(texts: Iterator[str], d: DataConfig, files: list[Path]) -> Iterator[str]:
    """A streamed corpus fails while it is read: the same one line as a loaded one."""
    try:
        yield from texts
    except Exception as exc:
        raise unreadable_file(d, files, exc) from exc


def unreadable_file(d: DataConfig, files: list[Path], exc: Exception) -> Exception:
    """The file (and line) a `datasets` builder failed on, found by reading the files ourselves; `exc`
    itself when no file is to blame."""
    if isinstance(exc, ConfigError):
        return exc
    builder = BUILDERS[files[0].suffix.lower()]
    for path in files:
        if builder == "json":
            bad = _bad_json(path)
            if bad:
                return ConfigError(f"data.path={d.path}: line {bad[0]} of {path} is not valid JSON ({bad[1]}); fix or delete that line")
        elif builder == "parquet":
            problem = _bad_parquet(path)
            if problem:
                return ConfigError(
                    f"data.path={d.path}: {path} is not a readable Parquet file ({problem}); replace that file or remove it from data.path"
                )
    return exc


def _bad_json(path: Path) -> tuple[int, str] | None:
    """(line, reason) of the first line that is not JSON; a .json file may also be one JSON document."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            json.loads(text)
            return None
        except ValueError:
            pass
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError as exc:
                return n, getattr(exc, "msg", str(exc))
    return None


def _bad_parquet(path: Path) -> str | None:
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
        for i in range(f.num_row_groups):
            f.read_row_group(i)
    except Exception as exc:  # pyarrow raises OSError, ArrowInvalid, ... for a damaged file
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def _texts(ds, d: DataConfig, files: list[Path]) -> Iterator[str]:
    local = d.path is not None
    column = "text" if local and BUILDERS[files[0].suffix.lower()] == "text" else d.text_field
    names = getattr(ds, "column_names", None)
    if names is not None and column not in names:
        raise ConfigError(f"data.text_field={column} is not a column of the corpus; its columns are: {', '.join(names)}")
    feature = (getattr(ds, "features", None) or {}).get(column)
    kind = getattr(feature, "dtype", None)
    if feature is not None and kind not in ("string", "large_string"):
        raise _not_text(d, column, kind or type(feature).__name__, names or [])
    replaced = 0
    for row in ds:
        if column not in row:
            raise ConfigError(f"data.text_field={column} is not a column of the corpus; its columns are: {', '.join(row)}")
        text = row[column]
        if text is None or text == "":
            continue
        if not isinstance(text, str):
            raise _not_text(d, column, type(text).__name__, list(row))
        if local and REPLACEMENT in text:
            replaced += text.count(REPLACEMENT)
        yield text
    if replaced:
        replaced -= sum(_count_in_file(p) for p in files)  # U+FFFD already in the files is text, not damage
    if replaced > 0:
        print(
            f"qkvlab: warning: {replaced} undecodable byte sequence(s) in {d.path} were replaced by U+FFFD",
            file=sys.stderr,
            flush=True,
        )


def _not_text(d: DataConfig, column: str, kind: str, names: list[str]) -> ConfigError:
    where = f"data.path={d.path}" if d.path is not None else f"data.hub={d.hub}"
    return ConfigError(
        f"data.text_field={column} of {where} holds {kind} values, not text; "
        f"set data.text_field to the column that holds the text (columns: {', '.join(names)})"
    )


def _count_in_file(path: Path) -> int:
    count, tail = 0, b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            block = tail + chunk
            count += block.count(_REPLACEMENT_BYTES)
            tail = block[-2:] if not block.endswith(_REPLACEMENT_BYTES) else b""
    return count
