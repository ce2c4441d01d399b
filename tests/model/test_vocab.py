"""The embedding has the tokenizer's vocabulary, padded up to model.vocab_multiple, not a constant."""

from __future__ import annotations

import pytest

from qkvlab.errors import ConfigError
from qkvlab.model import model_vocab
from tests.helpers import make_config


@pytest.mark.parametrize("preset", ["gpt2_124m", "paper_300m", "paper_1b"])
@pytest.mark.parametrize("data_vocab,rows", [(50257, 50304), (4096, 4096), (4097, 4160), (257, 320), (10, 64)])
def test_gpt_presets_pad_the_tokenizer_vocabulary_to_64(preset, data_vocab, rows):
    assert model_vocab(make_config(f"model={preset}", "data=mqar").model, data_vocab) == rows


def test_modern_presets_take_the_vocabulary_as_it_is():
    assert model_vocab(make_config("model=tiny").model, 257) == 257
    assert model_vocab(make_config("model=small").model, 4097) == 4097


def test_an_explicit_vocab_size_is_kept_and_must_cover_the_tokenizer():
    assert model_vocab(make_config("model=gpt2_124m", "model.vocab_size=50400").model, 50257) == 50400
    with pytest.raises(ConfigError) as err:
        model_vocab(make_config("model=gpt2_124m", "model.vocab_size=4096").model, 50257)
    assert str(err.value) == (
        "model.vocab_size=4096 is below the data's vocabulary (50257); raise model.vocab_size or set it to null to take the data's"
    )


def test_a_bad_vocab_multiple_is_one_line():
    with pytest.raises(ConfigError, match=r"model.vocab_multiple=0 is out of range; it must be >= 1"):
        make_config("model.vocab_multiple=0")


def test_the_trainer_builds_the_padded_embedding(tmp_path):
    from qkvlab.train.loop import Trainer

    trainer = Trainer(make_config("model=tiny", "model.vocab_multiple=64", "train.device=cpu", "logger=none"), tmp_path)
    assert trainer.info.vocab_size == 64 and trainer.model.tok_emb.num_embeddings == 64
