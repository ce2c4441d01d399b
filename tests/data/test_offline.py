"""A local corpus whose files are gone trains from its token cache, as the README says."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from qkvlab.config import ConfigError
from qkvlab.data import build_data


def test_a_deleted_file_trains_from_its_cache(tmp_path, make_docs, write_jsonl, text_config, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(60))
    built = build_data(text_config(corpus))
    stream = built.tokens.read(0, len(built.tokens))
    corpus.unlink()
    capsys.readouterr()
    again = build_data(text_config(corpus))
    assert again.tokens.path == built.tokens.path and np.array_equal(again.tokens.read(0, len(again.tokens)), stream)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(rf"qkvlab: data.path={re.escape(str(corpus))} does not exist; using its token cache "
                        rf"{re.escape(str(built.tokens.path))} \([\d,]+ tokens, built [\d-]+ [\d:]+\)", line), line


def test_several_versions_use_the_newest_and_say_so(tmp_path, make_docs, write_jsonl, text_config, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(60))
    old = build_data(text_config(corpus, tokenizer="bpe", bpe_vocab_size=300)).tokens.path
    write_jsonl(corpus, make_docs(70))
    st = corpus.stat()
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    new = build_data(text_config(corpus, tokenizer="bpe", bpe_vocab_size=300)).tokens.path
    os.utime(old / "meta.json", (1, 1))  # built long ago
    corpus.unlink()
    capsys.readouterr()
    assert build_data(text_config(corpus, tokenizer="bpe", bpe_vocab_size=300)).tokens.path == new
    assert capsys.readouterr().err.strip().endswith("; 1 older cache(s) of it ignored")


def test_other_tokenizer_settings_are_not_a_match(tmp_path, make_docs, write_jsonl, text_config):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(60))
    build_data(text_config(corpus, tokenizer="bpe", bpe_vocab_size=300))
    corpus.unlink()
    with pytest.raises(ConfigError, match=f"data.path={re.escape(str(corpus))} does not exist; point data.path at"):
        text_config(corpus, tokenizer="bpe", bpe_vocab_size=400)
    with pytest.raises(ConfigError, match="does not exist; point data.path at"):
        text_config(corpus, max_tokens=5000)


def test_a_deleted_directory_trains_from_its_cache(tmp_path, make_docs, write_jsonl, text_config):
    import shutil

    folder = tmp_path / "docs"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", make_docs(30))
    write_jsonl(folder / "b.jsonl", make_docs(40))
    built = build_data(text_config(folder)).tokens.path
    shutil.rmtree(folder)
    assert build_data(text_config(folder)).tokens.path == built
    with pytest.raises(ConfigError, match="does not exist"):
        text_config(folder / "a.jsonl")  # a file of it is another corpus
