"""Unreadable local corpus files are one line naming the file (and line) and the fix, read by the real loaders."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qkvlab.config import ConfigError
from qkvlab.data import build_data


@pytest.mark.parametrize("streaming", [False, True])
def test_a_malformed_jsonl_line_is_named(tmp_path, make_docs, text_config, streaming):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": t}) for t in make_docs(30)]
    lines[16] = '{"text": "an unterminated'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        build_data(text_config(path, streaming=streaming))
    message = str(err.value)
    assert re.fullmatch(rf"data.path={re.escape(str(path))}: line 17 of {re.escape(str(path))} is not valid JSON \(.+\); "
                        r"fix or delete that line", message), message


def test_a_text_field_of_numbers_is_named(tmp_path, text_config):
    path = tmp_path / "n.jsonl"
    path.write_text("".join(json.dumps({"text": i, "body": f"doc {i}"}) + "\n" for i in range(50)))
    with pytest.raises(ConfigError) as err:
        build_data(text_config(path))
    assert str(err.value) == (
        f"data.text_field=text of data.path={path} holds int64 values, not text; "
        "set data.text_field to the column that holds the text (columns: text, body)"
    )


def test_a_corrupt_parquet_file_is_named(tmp_path, make_docs, text_config):
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"text": make_docs(20)}), folder / "a.parquet")
    good = (folder / "a.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(good[: len(good) // 2] + b"\0" * 64 + good[-8:])
    with pytest.raises(ConfigError) as err:
        build_data(text_config(folder))
    message = str(err.value)
    assert message.startswith(f"data.path={folder}: {folder / 'b.parquet'} is not a readable Parquet file (")
    assert message.endswith("); replace that file or remove it from data.path") and "\n" not in message
