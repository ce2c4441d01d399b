from __future__ import annotations

import numpy as np
import pytest

from qkvlab.config import ConfigError, DataConfig
from qkvlab.data import corpus
from qkvlab.data.tokenizer import EOT_TEXT, ByteTokenizer, HFTokenizer, check_tokenizer, load_tokenizer, train_bpe


SAMPLE = ["Hello, world!\n", "naïve café — 東京 🚀", "  spaces\t\ttabs\n\n\nnewlines", ""]


def test_byte_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode_batch(SAMPLE)
    assert tok.vocab_size == 257 and tok.eot == 256
    assert [tok.decode(i) for i in ids] == SAMPLE
    assert all(i.max(initial=0) < 256 for i in ids)
    assert tok.decode(list(ids[0]) + [tok.eot]) == SAMPLE[0]  # end-of-text is not text


def test_bpe_trains_and_round_trips(make_docs):
    docs = make_docs(200) + SAMPLE
    tok = HFTokenizer(train_bpe(iter(docs), 500, show_progress=False))
    assert tok.vocab_size == 500 and tok.tok.id_to_token(tok.eot) == EOT_TEXT
    ids = tok.encode_batch(docs)
    assert [tok.decode(i) for i in ids] == docs
    assert sum(map(len, ids[:200])) < 0.75 * sum(len(d.encode()) for d in docs[:200])  # it learned merges
    unseen = "Zebra-quokka ✓ unseen text\r\n"
    assert tok.decode(tok.encode_batch([unseen])[0]) == unseen


def test_document_pieces_tokenize_like_the_whole():
    text = "".join(f"Line {i}: some words here.\n  more {i}\n\n" for i in range(3000))
    tok = HFTokenizer(train_bpe(iter([text]), 400, show_progress=False))
    whole = tok.encode_batch([text])[0]
    pieces = np.concatenate(tok.encode_batch(corpus.split_document(text, size=5000)))
    assert np.array_equal(whole, pieces)


def test_bpe_is_trained_once_and_cached(tmp_path, make_docs):
    d = DataConfig(name="t", task="text", causal=True, path="x", tokenizer="bpe", bpe_vocab_size=300)
    calls = []

    def docs():
        calls.append(1)
        return iter(make_docs(50))

    a = load_tokenizer(d, {"corpus": 1}, docs, progress=False)
    b = load_tokenizer(d, {"corpus": 1}, docs, progress=False)
    assert len(calls) == 1 and a.tok.to_str() == b.tok.to_str()
    load_tokenizer(d, {"corpus": 2}, docs, progress=False)  # another corpus, another BPE
    assert len(calls) == 2


def test_bad_tokenizer_settings():
    with pytest.raises(ConfigError, match="data.bpe_vocab_size=100"):
        check_tokenizer(DataConfig(tokenizer="bpe", bpe_vocab_size=100))
    with pytest.raises(ConfigError, match="data.tokenizer=gpt2 is not usable.*unreachable"):
        load_tokenizer(DataConfig(tokenizer="gpt2"), {}, lambda: iter([]))
