from __future__ import annotations

import pytest
import torch

from qkvlab.cli import CONF_DIR
from qkvlab.infer.generate import Sampling, generate, next_token
from qkvlab.model import build_model

from tests.helpers import make_config

VARIANTS = sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml"))


def causal_cfg(variant: str):
    return make_config("data=mqar", f"variant={variant}", "model.d_ff=128", "model.context=64")


CASES = [(v, Sampling(12, 0.0)) for v in VARIANTS] + [
    (v, Sampling(12, 1.0, top_k=10, top_p=0.9)) for v in ("mha", "k_eq_v_mqa")
]


@pytest.mark.parametrize("variant,sampling", CASES, ids=[f"{v}-t{s.temperature}" for v, s in CASES])
def test_cached_generation_equals_recomputation(variant, sampling):
    torch.manual_seed(1)
    model = build_model(causal_cfg(variant), vocab_size=50).eval()
    prompt = torch.randint(0, 50, (2, 7))
    runs = [
        generate(model, prompt, sampling, torch.Generator().manual_seed(5), use_cache=use_cache)
        for use_cache in (True, False)
    ]
    assert runs[0].shape == (2, 12)
    assert torch.equal(runs[0], runs[1])


def test_top_k_and_top_p_only_draw_allowed_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(200, 1)
    gen = torch.Generator().manual_seed(0)
    top_k = next_token(logits, Sampling(1, 1.0, top_k=2), gen)
    assert set(top_k.tolist()) == {0, 1}
    # softmax mass: 0.64, 0.24, ...; top_p=0.7 keeps the first two
    top_p = next_token(logits, Sampling(1, 1.0, top_p=0.7), gen)
    assert set(top_p.tolist()) == {0, 1}
    assert next_token(logits[:1], Sampling(1, 0.0), gen).item() == 0


def test_generation_past_the_context_is_refused():
    model = build_model(causal_cfg("mha"), vocab_size=50).eval()
    with pytest.raises(ValueError, match="context"):
        generate(model, torch.zeros(1, 60, dtype=torch.long), Sampling(10, 0.0))
