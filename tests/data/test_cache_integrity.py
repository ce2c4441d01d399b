"""A damaged token cache or BPE tokenizer cache is named in one line that says to delete it."""

from __future__ import annotations

import json
import os
import re

import pytest

from qkvlab.config import ConfigError
from qkvlab.data.text import cache_request
from qkvlab.data.token_cache import TokenCache, open_token_cache


@pytest.fixture
def entry(tmp_path, make_docs, write_jsonl, text_config):
    cfg = text_config(write_jsonl(tmp_path / "c.jsonl", make_docs(40)))
    return open_token_cache(cache_request(cfg.data, progress=False)).path


def damaged(path, detail: str) -> str:
    return re.escape(f"token cache {path} is damaged ({detail}); delete that directory to rebuild it")


def test_an_intact_entry_opens(entry):
    assert len(TokenCache(entry)) > 0


def test_a_truncated_shard_is_named(entry):
    shard = entry / "shard_00000.bin"
    size = shard.stat().st_size
    os.truncate(shard, 1024)
    with pytest.raises(ConfigError, match=damaged(entry, f"shard_00000.bin: 1,024 of {size:,} bytes")):
        TokenCache(entry)


def test_a_missing_shard_is_named(entry):
    (entry / "shard_00000.bin").unlink()
    with pytest.raises(ConfigError, match=damaged(entry, "shard_00000.bin is missing")):
        TokenCache(entry)


def test_overwritten_bytes_fail_the_checksum(entry):
    TokenCache(entry)  # verified once, and remembered
    shard = entry / "shard_00000.bin"
    with open(shard, "r+b") as f:
        f.seek(100)
        f.write(b"\x07\x00\x07\x00")
    with pytest.raises(ConfigError, match=re.escape(f"token cache {entry} is damaged (shard_00000.bin: checksum ") + r"[0-9a-f]{8}, expected [0-9a-f]{8}\); delete"):
        TokenCache(entry)


def test_an_id_outside_the_vocabulary_is_named(entry):
    meta = json.loads((entry / "meta.json").read_text())
    meta["vocab_size"] = 200  # the bytes of the text are above 200
    (entry / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=re.escape(f"token cache {entry} is damaged (") + r"token id \d+ .*outside the vocabulary of 200\)"):
        TokenCache(entry)


@pytest.mark.parametrize(
    "edit,detail",
    [
        (lambda m: "", "meta.json is empty"),
        (lambda m: "{not json", "meta.json is not valid JSON"),
        (lambda m: json.dumps({**m, "n_tokens": m["n_tokens"] + 5}), "meta.json says"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "shards"}), "meta.json lacks 'shards'"),
        (lambda m: json.dumps({**m, "n_tokens": m["n_tokens"] - 3, "shards": [{**m["shards"][0], "tokens": m["shards"][0]["tokens"] - 3}]}),
         "shard_00000.bin:"),
    ],
)
def test_an_edited_meta_json_is_named(entry, edit, detail):
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(edit(meta))
    with pytest.raises(ConfigError, match=re.escape(f"token cache {entry} is damaged ({detail}") + ".*delete that directory to rebuild it"):
        TokenCache(entry)


def test_a_damaged_entry_is_reported_by_open_token_cache(tmp_path, make_docs, write_jsonl, text_config):
    cfg = text_config(write_jsonl(tmp_path / "c.jsonl", make_docs(40)))
    path = open_token_cache(cache_request(cfg.data, progress=False)).path
    (path / "meta.json").write_text("")
    with pytest.raises(ConfigError, match="is damaged"):
        open_token_cache(cache_request(cfg.data, progress=False))


def test_a_damaged_bpe_tokenizer_cache_is_named(tmp_path, make_docs):
    from qkvlab.config import DataConfig
    from qkvlab.data.tokenizer import load_tokenizer

    d = DataConfig(name="t", task="text", causal=True, path="x", tokenizer="bpe", bpe_vocab_size=300)
    load_tokenizer(d, {"corpus": 1}, lambda: iter(make_docs(50)), progress=False)
    (entry,) = [p for p in (tmp_path / "cache" / "tokenizers").iterdir() if p.is_dir()]
    (entry / "tokenizer.json").write_text('{"truncated": ')
    with pytest.raises(ConfigError, match=re.escape(f"BPE tokenizer cache {entry} is damaged (tokenizer.json: checksum")):
        load_tokenizer(d, {"corpus": 1}, lambda: pytest.fail("retrained"), progress=False)


def test_an_unwritable_cache_root_is_one_line(tmp_path, monkeypatch, make_docs, write_jsonl, text_config):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    if os.access(root, os.W_OK):
        pytest.skip("running as root: permissions do not apply")
    monkeypatch.setenv("QKVLAB_CACHE", str(root))
    cfg = text_config(write_jsonl(tmp_path / "c.jsonl", make_docs(40)))
    with pytest.raises(ConfigError, match=re.escape(f"QKVLAB_CACHE={root} is not writable") + ".*set QKVLAB_CACHE to a writable directory"):
        open_token_cache(cache_request(cfg.data, progress=False))


def test_a_file_in_the_way_of_the_cache_root_is_one_line(tmp_path, monkeypatch, make_docs, write_jsonl, text_config):
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("QKVLAB_CACHE", str(tmp_path / "afile" / "cache"))
    cfg = text_config(write_jsonl(tmp_path / "c.jsonl", make_docs(40)))
    with pytest.raises(ConfigError, match=re.escape(f"QKVLAB_CACHE={tmp_path / 'afile' / 'cache'} is not writable") + ".*set QKVLAB_CACHE"):
        open_token_cache(cache_request(cfg.data, progress=False))
