"""A trained run is always read with its own data, tokenizer and model: overrides that would change them are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from qkvlab.config import as_dict
from qkvlab.errors import ConfigError
from qkvlab.infer.load import load_trained
from qkvlab.model import build_model
from qkvlab.model.kv_cache import KVCache
from qkvlab.train.device import inference_model
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


@pytest.mark.parametrize("variant", ["mha", "q_eq_k", "k_eq_v", "q_eq_k_eq_v"])
def test_bf16_inference_casts_once_and_agrees_with_autocast(variant):
    """eval/generate cast the model to bf16 once; its logits, and its bf16-cached decoding, stay within
    bf16 rounding of the autocast forward they replace."""
    torch.manual_seed(0)
    model = build_model(make_config("data=mqar", f"variant={variant}", "model.d_ff=128", "model.context=64"), 50).eval()
    idx = torch.randint(0, 50, (2, 40))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(idx).float()
    cast = inference_model(copy.deepcopy(model), "bf16")
    assert {p.dtype for p in cast.parameters()} == {torch.bfloat16}
    cache = KVCache(cast, batch=2, max_len=40)
    with torch.no_grad():
        full = cast(idx).float()
        decoded = torch.cat([cast(idx[:, :8], cache, 0)] + [cast(idx[:, t : t + 1], cache, t) for t in range(8, 40)], 1)
    assert cache[0].dtype == torch.bfloat16
    scale = reference.abs().max().item()
    for logits in (full, decoded.float()):
        assert (logits - reference).abs().max().item() < 0.03 * scale
