"""Expanded attention changes only the score: with U = I it is `mha`, and it starts as `mha`."""

from __future__ import annotations

import pytest
import torch

from qkvlab.errors import ConfigError
from qkvlab.model import build_model, count_params

from tests.helpers import make_config


def twins(*overrides: str):
    """An expanded model and an `mha` model with the same weights everywhere but U."""
    torch.manual_seed(0)
    expanded = build_model(make_config("data=mqar", "variant=expanded", *overrides), vocab_size=50).eval()
    mha = build_model(make_config("data=mqar", "variant=mha"), vocab_size=50).eval()
    state = {k: v for k, v in expanded.state_dict().items() if not k.endswith(".expand")}
    mha.load_state_dict(state)
    return expanded, mha


def test_u_equal_to_the_identity_is_mha_exactly():
    expanded, mha = twins("variant.rank=16")
    for block in expanded.blocks:
        with torch.no_grad():
            block.attn.expand.copy_(torch.eye(16))
    x = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(expanded(x), mha(x), rtol=0, atol=0)


def test_orthogonal_init_starts_as_mha_and_u_is_a_parameter_per_layer():
    expanded, mha = twins()
    u = expanded.blocks[0].attn.expand
    assert u.shape == (16, 48)  # d_head x 3 * d_head
    torch.testing.assert_close(u @ u.T, torch.eye(16), rtol=0, atol=1e-5)
    x = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(expanded(x), mha(x), rtol=1e-4, atol=1e-5)
    extra = count_params(expanded)["params/attention"] - count_params(mha)["params/attention"]
    assert extra == expanded.cfg.n_layers * 16 * 48


def test_rank_on_another_family_is_refused():
    with pytest.raises(ConfigError, match="variant.rank=8 is read only by variant.family=expanded"):
        make_config("variant=mha", "variant.rank=8")
