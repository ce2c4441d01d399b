"""A run records the tokens it trained on; other tokens are refused, the same tokens accepted."""

from __future__ import annotations

import os
import re

import pytest

from qkvlab.config import ConfigError
from qkvlab.data import MISSING, build_data, check_same_data


@pytest.fixture
def corpus(tmp_path, make_docs, write_jsonl):
    return write_jsonl(tmp_path / "c.jsonl", make_docs(60))


def test_synthetic_data_has_no_identity_and_always_matches():
    from tests.helpers import make_config

    data = build_data(make_config("data=sort"))
    assert data.identity is None
    check_same_data(None, data, "ckpt", "fix")


def test_the_same_corpus_is_accepted_even_when_only_touched(corpus, text_config):
    first = build_data(text_config(corpus))
    st = corpus.stat()
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new cache entry, the same tokens
    again = build_data(text_config(corpus))
    assert again.identity["entry"] != first.identity["entry"]
    check_same_data(first.identity, again, "ckpt", "fix")


def test_an_edited_corpus_is_refused_in_one_line(corpus, text_config, make_docs, write_jsonl):
    first = build_data(text_config(corpus))
    write_jsonl(corpus, make_docs(61))
    edited = build_data(text_config(corpus))
    with pytest.raises(ConfigError) as err:
        check_same_data(first.identity, edited, "run/checkpoints/step_00000004.pt", "start fresh with train.resume=never")
    message = str(err.value)
    assert "\n" not in message
    assert re.fullmatch(
        rf"the corpus changed since this run trained: token cache {edited.identity['entry']} "
        rf"\(data.path={re.escape(str(corpus))}, [\d,]+ tokens, checksum [0-9a-f]{{8}}\) is not "
        rf"token cache {first.identity['entry']} \([\d,]+ tokens, checksum [0-9a-f]{{8}}\) it trained on "
        r"\(run/checkpoints/step_00000004.pt\); restore the corpus, or start fresh with train.resume=never",
        message,
    ), message


def test_a_checkpoint_without_a_record_is_accepted_with_a_note(corpus, text_config, capsys):
    check_same_data(MISSING, build_data(text_config(corpus)), "old.pt", "fix")
    assert "qkvlab: note: old.pt predates corpus checks" in capsys.readouterr().err
