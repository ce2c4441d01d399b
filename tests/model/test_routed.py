"""Routed query heads against their definition (R-GQA, MoH): per token and KV group the top_k
routed heads plus the shared ones run, weighted by top_k x the renormalised router scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkvlab.errors import ConfigError
from qkvlab.model import build_model, count_params
from qkvlab.model.flops import train_flops_per_token

from tests.helpers import make_config

GQA4 = ("data=mqar", "model.n_heads=8", "model.d_model=64", "variant.kv_group_size=4")


def routed(*overrides: str):
    torch.manual_seed(0)
    return build_model(make_config("variant=routed", *GQA4, *overrides), vocab_size=50).eval()


@pytest.mark.parametrize("shared,top_k", [(0, 4), (1, 3)])
def test_every_head_picked_with_a_uniform_router_is_dense_gqa(shared, top_k):
    """Zero router weights: uniform scores, so every renormalised weight x top_k is 1."""
    net = routed(f"variant.shared_heads={shared}", f"variant.top_k={top_k}")
    gqa = build_model(make_config("variant=gqa", *GQA4), vocab_size=50).eval()
    state = {k: v for k, v in net.state_dict().items() if ".router." not in k}
    gqa.load_state_dict(state)
    for block in net.blocks:
        torch.nn.init.zeros_(block.attn.router.weight)
    x = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(net(x), gqa(x), rtol=1e-6, atol=1e-6)


def test_output_is_the_dense_heads_masked_and_weighted_as_defined():
    """Written apart from the module: every head densely, then per token keep the shared heads
    (weight 1) and the top_k routed ones (weight top_k x softmax renormalised over the picked)."""
    net = routed("variant.shared_heads=1", "variant.top_k=2")
    attn = net.blocks[0].attn
    B, T, H, G, g, d = 2, 14, 8, 2, 4, 8
    x = net.blocks[0].norm1(net.tok_emb(torch.randint(0, 50, (B, T))))
    rope = net.rope(0, T)
    with torch.no_grad():
        q, k, v = attn.qkv_from(attn.project(x), rope)
        dense = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, H, T, d)
        probs = attn.router(x).view(B, T, G, g - 1).softmax(-1)
        weight = torch.zeros(B, T, G, g)
        weight[..., 0] = 1.0
        for b in range(B):
            for t in range(T):
                for grp in range(G):
                    p, i = probs[b, t, grp].topk(2)
                    weight[b, t, grp, 1 + i] = 2 * p / p.sum()
        mixed = dense * weight.view(B, T, H).transpose(1, 2).unsqueeze(-1)
        expected = attn.out(mixed.transpose(1, 2).reshape(B, T, -1))
        torch.testing.assert_close(attn(x, rope), expected, rtol=1e-5, atol=1e-6)


def test_parameters_flops_and_computed_heads_follow_the_closed_form():
    """The router adds d_model x n_kv x (g - s) per layer; scores and mixing run for n_kv x (s + k) heads."""
    net = routed("variant.shared_heads=1", "variant.top_k=2")
    gqa = build_model(make_config("variant=gqa", *GQA4), vocab_size=50)
    layers, d_model, n_kv, g, d_head, T = 2, 64, 2, 4, 8, 32
    assert count_params(net)["params/attention"] - count_params(gqa)["params/attention"] == layers * d_model * n_kv * (g - 1)
    assert [b.attn.query_heads_computed for b in net.blocks] == [n_kv * 3] * layers
    router_matmul = 6 * layers * d_model * n_kv * (g - 1)
    skipped_scores = layers * 12 * n_kv * (g - 3) * d_head * T
    assert train_flops_per_token(net, T) - train_flops_per_token(gqa, T) == router_matmul - skipped_scores


def test_load_balance_is_one_when_balanced_and_has_a_gradient_wrt_the_router():
    net = routed("variant.shared_heads=0", "variant.top_k=2").train()
    attn = net.blocks[0].attn
    # Two tokens, one group of 4 routed heads: the first picks heads 0 and 1, the second 2 and 3.
    balanced = torch.tensor([[0, 1], [2, 3]]).view(1, 2, 1, 2)
    assert float(attn.load_balance(torch.full((1, 2, 1, 4), 0.25), balanced)) == pytest.approx(1.0)
    # Both pick heads 0 and 1, and the router puts all its probability there: (g - s) x 2 x 1/4.
    collapsed = torch.tensor([[0, 1], [0, 1]]).view(1, 2, 1, 2)
    probs = torch.tensor([0.5, 0.5, 0.0, 0.0]).expand(1, 2, 1, 4)
    assert float(attn.load_balance(probs, collapsed)) == pytest.approx(2.0)
    _, aux = net.forward_with_aux(torch.randint(0, 50, (2, 16)))
    aux["load_balance"].backward()
    assert all(b.attn.router.weight.grad.abs().sum() > 0 for b in net.blocks)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["variant.top_k=1"], "variant.top_k=1"),
        (["variant.shared_heads=3"], "variant.shared_heads=3"),
        (["variant.top_k=4", "variant.shared_heads=1"], "variant.top_k=4"),
        (["variant.kv_group_size=1"], "variant.family=routed"),
        (["variant.sharing=q_eq_k", "variant.kv_group_size=1"], "variant.sharing=q_eq_k"),
        (["variant.aux_weight=-1"], "variant.aux_weight=-1"),
    ],
)
def test_what_it_cannot_do_is_one_line_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config("variant=routed", "data=mqar", "model.n_heads=4", *overrides)


@pytest.mark.parametrize("override", ["variant.top_k=2", "variant.shared_heads=1", "variant.aux_weight=0.1"])
def test_routing_keys_on_a_family_without_routing_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        make_config("variant=gqa", "data=mqar", override)
