from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qkvlab.config import ConfigError, DataConfig
from qkvlab.data import corpus



def _data(path=None, **kw) -> DataConfig:
    return DataConfig(name="text", task="text", causal=True, path=str(path) if path else None, **kw)


@pytest.fixture
def load_calls(monkeypatch):
    """Records every `datasets.load_dataset` call, which still runs for real."""
    import datasets

    calls = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    return calls


def test_local_formats_go_through_load_dataset_builders(tmp_path, load_calls, make_docs, write_jsonl):
    docs = make_docs(12)
    write_jsonl(tmp_path / "c.jsonl", docs)
    pq.write_table(pa.table({"text": docs, "n": list(range(12))}), tmp_path / "c.parquet")
    txt_dir = tmp_path / "txt"
    txt_dir.mkdir()
    for i, t in enumerate(docs[:3]):
        (txt_dir / f"{i}.txt").write_text(t + "\nsecond line\n")
    assert list(corpus.documents(_data(tmp_path / "c.jsonl"))) == docs
    assert list(corpus.documents(_data(tmp_path / "c.parquet", streaming=True))) == docs
    # A .txt file is one document, line breaks kept.
    assert list(corpus.documents(_data(txt_dir))) == [t + "\nsecond line\n" for t in docs[:3]]
    assert [args[0] for args, _ in load_calls] == ["json", "parquet", "text"]


def test_hub_path_is_the_same_call(tmp_path, load_calls, make_docs, write_jsonl):
    """data.hub goes to load_dataset(name, config, split=...): a local dataset folder stands in for the hub."""
    docs = make_docs(5)
    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "train.jsonl", docs)
    d = DataConfig(name="x", task="text", causal=True, hub=str(tmp_path / "ds"))
    assert list(corpus.documents(d)) == docs
    (args, kwargs), = load_calls
    assert args == (str(tmp_path / "ds"), None) and kwargs["split"] == "train"


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text \xff\xfe more \x80 end \xef\xbf\xbd already a replacement char\n")
    (text,) = corpus.documents(_data(path))
    assert "good text" in text and "end" in text
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 undecodable byte sequence(s)" in err[0], err


@pytest.mark.parametrize(
    "name, content, message",
    [("missing.txt", None, "does not exist"), ("empty.txt", "", "is empty"), ("table.csv", "a,b", "unsupported type")],
)
def test_bad_local_paths_fail_in_one_line(tmp_path, name, content, message, text_config):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        text_config(path)
    assert "\n" not in str(err.value) and "data.path" in str(err.value)


def test_mixed_types_and_no_source_are_config_errors(tmp_path, text_config, write_jsonl):
    (tmp_path / "a.txt").write_text("x")
    write_jsonl(tmp_path / "b.jsonl", ["y"])
    with pytest.raises(ConfigError, match="mixes file types"):
        text_config(tmp_path)
    with pytest.raises(ConfigError, match="needs data.path"):
        text_config(None)
    with pytest.raises(ConfigError, match="are both set"):
        text_config(tmp_path / "a.txt", hub="roneneldan/TinyStories")


def test_uncached_hub_corpus_offline_fails_at_once(tmp_path):
    d = DataConfig(name="x", task="text", causal=True, hub="roneneldan/TinyStories")
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        list(corpus.documents(d))
    msg = str(err.value)
    assert time.perf_counter() - start < 30
    assert "\n" not in msg and "unreachable" in msg and "data.path" in msg


def test_split_document_cuts_only_before_line_starts():
    text = "".join(f"line {i}\n  indented {i}\n\n" for i in range(2000))
    pieces = corpus.split_document(text, size=1000)
    assert len(pieces) > 10 and "".join(pieces) == text
    assert all(p.endswith("\n") and not text[len("".join(pieces[: i + 1]))].isspace() for i, p in enumerate(pieces[:-1]))
