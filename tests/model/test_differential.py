"""Differential attention against its paper's definition (Ye et al. 2024)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkvlab.errors import ConfigError
from qkvlab.model import build_model, count_params
from qkvlab.model.flops import train_flops_per_token

from tests.helpers import make_config


def model(*overrides: str):
    torch.manual_seed(0)
    return build_model(make_config("data=mqar", "variant=differential", *overrides), vocab_size=50).eval()


def test_lambda_init_follows_depth_as_in_the_paper():
    net = model("model.n_layers=3")
    assert [b.attn.lambda_init for b in net.blocks] == pytest.approx([0.8 - 0.6 * math.exp(-0.3 * l) for l in range(3)])
    assert net.blocks[0].attn.lambda_init == pytest.approx(0.2)


def test_with_lambda_zero_it_is_one_softmax_map_then_the_head_norm():
    """lambda = 0 (lambda_init 0, lq . lk equal for both maps): the first map alone, through the
    per-head RMSNorm, scaled by 1 - 0."""
    net = model()
    attn = net.blocks[0].attn
    with torch.no_grad():
        attn.lambda_init = 0.0
        attn.lambda_q.zero_()
        attn.lambda_k.zero_()
    assert float(attn.lam().detach()) == 0.0
    x = net.blocks[0].norm1(net.tok_emb(torch.randint(0, 50, (2, 12))))
    rope = net.rope(0, 12)
    with torch.no_grad():
        q, k, v = attn.project(x, rope)
        single = F.scaled_dot_product_attention(q[:, 0::2], k[:, 0::2], v, is_causal=True)
        expected = attn.out(attn.head_norm(single).transpose(1, 2).reshape(2, 12, -1))
        torch.testing.assert_close(attn(x, rope), expected, rtol=0, atol=0)


def test_parameters_are_mha_plus_the_lambdas_and_the_head_norm():
    mha = build_model(make_config("data=mqar", "variant=mha"), vocab_size=50)
    net = model()
    d_head, layers = 16, 2
    extra = count_params(net)["params/attention"] - count_params(mha)["params/attention"]
    assert extra == layers * (4 * d_head // 2 + d_head)
    # The second map's AV is counted: 6 more per head-dim and context token per layer than mha.
    assert train_flops_per_token(net, 32) - train_flops_per_token(mha, 32) == layers * 6 * 4 * d_head * 32


@pytest.mark.parametrize("overrides", [["variant.sharing=k_eq_v"], ["variant.kv_group_size=2"], ["variant.qk_norm=true"]])
def test_what_it_cannot_combine_with_is_one_line(overrides):
    with pytest.raises(ConfigError, match="variant.family=differential"):
        make_config("data=mqar", "variant=differential", *overrides)
