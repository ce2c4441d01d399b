"""A trained run is always read with its own data, tokenizer and model: overrides that would change them are refused."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from qkvlab.config import as_dict
from qkvlab.errors import ConfigError
from qkvlab.infer.load import load_trained
from tests.helpers import make_config


@pytest.fixture
def run_dir(tmp_path):
    corpus = tmp_path / "train.txt"
    corpus.write_text("some training text\n" * 50)
    cfg = make_config("data=text", f"data.path={corpus}", "data.tokenizer=bpe", "data.bpe_vocab_size=300")
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(as_dict(cfg)), tmp_path / "run" / ".hydra" / "config.yaml")
    return tmp_path / "run"


@pytest.mark.parametrize(
    "override",
    ["data.path=valid.txt", "data.tokenizer=byte", "data.bpe_vocab_size=512", "data.max_tokens=100000", "data.text_field=body",
     "data.split=test", "data.hub=x/y", "model.d_model=32", "model.vocab_size=512", "variant.sharing=k_eq_v", "data.task=sort"],
)
def test_an_override_that_changes_tokenizer_or_model_is_refused(run_dir, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_trained(run_dir, [override])
    hint = " (to score other text with the run's tokenizer: qkvlab eval RUN_DIR --data.path FILE)" if key == "data.path" else ""
    assert str(err.value) == (
        f"{override} would change the data, tokenizer or model this run trained with; "
        f"eval and generate always use the run's own: drop {key}{hint}"
    )


def test_harmless_overrides_pass_the_check(run_dir):
    with pytest.raises(ConfigError, match="final.pt is missing"):  # got past the override check to the checkpoint
        load_trained(run_dir, ["train.device=cpu", "data.batch_size=4", "data.val_tokens=128", "train.precision=fp32"])
