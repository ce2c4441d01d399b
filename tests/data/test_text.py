from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from qkvlab.config import ConfigError
from qkvlab.data import IGNORE, build_data
from qkvlab.data.text import TextData


@pytest.fixture
def corpus(tmp_path, make_docs, write_jsonl):
    return write_jsonl(tmp_path / "c.jsonl", make_docs(80))


def test_documents_are_packed_with_end_of_text_between_them(corpus, make_docs, text_config):
    data = build_data(text_config(corpus))
    assert isinstance(data, TextData) and data.causal and not data.exact_match and data.vocab_size == 257
    stream = data.tokens.read(0, len(data.tokens))
    expected = np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8), 256) for d in make_docs(80)])
    assert np.array_equal(stream, expected)


def test_train_batches_are_next_token_targets_with_nothing_ignored(corpus, text_config):
    data = TextData(text_config(corpus))
    x, y = data.train_batch(3)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert (y != IGNORE).all()
    assert (x == data.eot).any()  # windows cross document boundaries (packing, no padding)


def test_train_batches_depend_only_on_seed_step_and_micro(corpus, text_config):
    a, b = TextData(text_config(corpus)), TextData(text_config(corpus))
    assert all(torch.equal(p, q) for p, q in zip(a.train_batch(5, 1), b.train_batch(5, 1)))
    assert not torch.equal(a.train_batch(5, 1)[0], a.train_batch(5, 0)[0])
    other = text_config(corpus)
    other.seed = 1
    assert not torch.equal(TextData(other).train_batch(5, 1)[0], a.train_batch(5, 1)[0])


def test_validation_is_identical_across_variants_and_seeds(corpus, text_config):
    base = text_config(corpus)
    other = text_config(corpus)
    other.seed, other.variant.name, other.variant.sharing = 7, "k_eq_v", "k_eq_v"
    va, vb = list(TextData(base).val_batches()), list(TextData(other).val_batches())
    assert len(va) == len(vb) > 1
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(va, vb))


def test_validation_scores_exactly_val_tokens_and_no_padding(corpus, text_config):
    data = TextData(text_config(corpus, val_tokens=250))  # 250 = 15 full rows of 16 + 10
    xs, ys = zip(*data.val_batches())
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (16, 16) and int((y != IGNORE).sum()) == 250
    assert (y[-1, 10:] == IGNORE).all() and (x[-1, 10:] == data.eot).all()
    stream = torch.from_numpy(data.tokens.read(data.val_start, data.val_start + 251))
    assert torch.equal(x.flatten()[:250], stream[:-1]) and torch.equal(y.flatten()[:250], stream[1:])


def test_train_and_validation_are_disjoint(corpus, text_config):
    data = TextData(text_config(corpus, val_tokens=400))
    tok = data.tokens.tokenizer()
    assert data.tokens.read(data.val_start - 1, data.val_start)[0] == data.eot  # validation starts a document
    val_text = tok.decode(data.tokens.read(data.val_start, len(data.tokens)))
    val_docs = set(re.findall(r"doc\d{4}", val_text))
    assert len(val_docs) >= 3
    seen = set()
    for step in range(300):
        assert (data.train_positions(step) + data.cfg.seq_len < data.val_start).all()
        x, y = data.train_batch(step)
        seen |= set(re.findall(r"doc\d{4}", tok.decode(torch.cat([x[:, :1], y], 1).flatten().tolist())))
    assert seen and not seen & val_docs


def test_bad_validation_budgets_are_config_errors(corpus, text_config):
    with pytest.raises(ConfigError, match="data.val_tokens=0 is out of range"):
        text_config(corpus, val_tokens=0)
    with pytest.raises(ConfigError, match="data.max_tokens=100 leaves too little"):
        text_config(corpus, max_tokens=100)
    with pytest.raises(ConfigError, match="data.val_tokens=100000 is more than half of the corpus"):
        TextData(text_config(corpus, val_tokens=100_000))


@pytest.mark.slow
def test_tinyshakespeare_with_a_fresh_bpe(shakespeare, text_config):
    data = TextData(text_config(shakespeare, tokenizer="bpe", bpe_vocab_size=4096, seq_len=64, val_tokens=16384))
    assert data.vocab_size == 4096 and data.tokens.meta["dtype"] == "uint16"
    stream = data.tokens.read(0, len(data.tokens))
    assert stream[-1] == data.eot and (stream == data.eot).sum() == 1  # one file, one document
    assert data.tokens.tokenizer().decode(stream[:-1]) == shakespeare.read_text()
    assert 250_000 < len(stream) < 450_000  # about 3 bytes a token


def test_val_path_validates_on_exactly_the_files_tokens_and_trains_on_the_whole_stream(corpus, tmp_path, text_config):
    held = tmp_path / "held.jsonl"
    held.write_text('{"text": "held out one"}\n{"text": "and two"}\n')
    plain = TextData(text_config(corpus, val_tokens=256))
    data = TextData(text_config(corpus, val_tokens=256, val_path=str(held)))
    assert data.tokens.path == plain.tokens.path  # the same training token cache, nothing added to it
    assert data.val_start == len(data.tokens) > plain.val_start
    xs, ys = zip(*data.val_batches())
    y = torch.cat(ys).flatten()
    assert bytes(y[y != IGNORE].tolist()) == b"held out oneand two"
    assert torch.cat(xs).flatten()[0] == data.eot and (torch.cat(xs).flatten()[13] == data.eot)  # a document follows end-of-text
    capped = TextData(text_config(corpus, val_tokens=5, val_path=str(held)))
    y = torch.cat([b for _, b in capped.val_batches()]).flatten()
    assert bytes(y[y != IGNORE].tolist()) == b"held "


def test_a_missing_val_path_is_one_line(corpus, tmp_path, text_config):
    with pytest.raises(ConfigError) as err:
        text_config(corpus, val_path=str(tmp_path / "nope.txt"))
    assert str(err.value) == (f"data.val_path={tmp_path / 'nope.txt'} does not exist; "
                              "point data.val_path at a .txt, .jsonl or .parquet file or a directory of them")
