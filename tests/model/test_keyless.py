"""keyless: scores (q R_h) . v_j / sqrt(d_head), values x W_V, V alone cached; sizes in closed form."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkvlab.config import n_kv_heads
from qkvlab.errors import ConfigError
from qkvlab.model import build_model, count_params, kv_cache_bytes_per_token
from qkvlab.model.attention import rotate
from qkvlab.model.flops import train_flops_per_token
from qkvlab.model.kv_cache import KVCache

from tests.helpers import make_config


def build(*overrides: str, variant: str = "keyless"):
    torch.manual_seed(0)
    cfg = make_config("data=mqar", f"variant={variant}", "model.context=64", *overrides)
    return cfg, build_model(cfg, vocab_size=50).eval()


@pytest.mark.parametrize("overrides", [("model=tiny",), ("model=small", "variant.kv_group_size=4"), ("model.bias=true",)])
def test_parameter_count_and_cache_bytes_equal_the_closed_form(overrides):
    cfg, net = build(*overrides)
    m, kv = cfg.model, n_kv_heads(cfg)
    d, H, L = m.d_model, m.n_heads, m.n_layers
    dh, b = d // H, int(m.bias)
    per_layer = d * H * dh + d * kv * dh + H * dh * dh + H * dh * d + b * (H * dh + kv * dh + d)
    assert count_params(net)["params/attention"] == L * per_layer
    for dtype in (torch.float32, torch.bfloat16):
        expected = L * kv * dh * torch.empty((), dtype=dtype).element_size()
        assert KVCache(net, batch=2, max_len=32, dtype=dtype).bytes_per_token() == kv_cache_bytes_per_token(net, dtype) == expected


@pytest.mark.parametrize("positions", ["rope", "none"])
def test_scores_are_the_studys_formula(positions):
    """softmax(RoPE_i(q_i R_h) . RoPE_j(v_j) / sqrt(d_head)) v, with GQA: every head of a group scores its one V head."""
    cfg, net = build(f"model.positions={positions}", "variant.kv_group_size=2")
    attn, T = net.blocks[0].attn, 12
    H, dh = cfg.model.n_heads, cfg.model.d_model // cfg.model.n_heads
    x = torch.randn(2, T, cfg.model.d_model)
    w_q, w_v = attn.qkv.weight.split([H * dh, H // 2 * dh])
    q = (x @ w_q.T).view(2, T, H, dh).transpose(1, 2) @ attn.score_map
    v = (x @ w_v.T).view(2, T, H // 2, dh).transpose(1, 2).repeat_interleave(2, dim=1)
    k = v
    rope = net.rope(0, T)
    if rope is not None:
        q, k = rotate(q, rope.cos, rope.sin), rotate(v, rope.cos, rope.sin)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    y = F.softmax(scores, dim=-1) @ v
    with torch.no_grad():
        torch.testing.assert_close(attn(x, rope), attn.out(y.transpose(1, 2).reshape(2, T, -1)), rtol=1e-4, atol=1e-5)


def test_r_folds_into_w_q_so_keyless_is_a_reparametrised_k_eq_v():
    """With RoPE too: R_h acts before the rotation, so W_Q^h R_h is an ordinary query projection."""
    cfg, net = build()
    _, plain = build(variant="k_eq_v")
    H, dh = cfg.model.n_heads, cfg.model.d_model // cfg.model.n_heads
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("score_map")}
    for i, block in enumerate(net.blocks):
        w = state[f"blocks.{i}.attn.qkv.weight"].clone()
        w_q = w[: H * dh].view(H, dh, -1)
        w[: H * dh] = (block.attn.score_map.detach().transpose(1, 2) @ w_q).reshape(H * dh, -1)
        state[f"blocks.{i}.attn.qkv.weight"] = w
    plain.load_state_dict(state)
    x = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("overrides", [("variant.kv_group_size=2",), ("model.positions=learned",), ("variant.qk_norm=true",), ("variant.share_every=2",)])
def test_cached_decoding_equals_recomputation(overrides):
    _, net = build(*overrides)
    x = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        cache = KVCache(net, batch=2, max_len=20)
        parts = [net(x[:, :7], cache, 0), net(x[:, 7:11], cache, 7)] + [net(x[:, t : t + 1], cache, t) for t in range(11, 20)]
        torch.testing.assert_close(torch.cat(parts, dim=1), net(x), rtol=1e-4, atol=1e-5)


def test_r_starts_at_the_studys_init_whatever_init_std_says():
    _, net = build("model=small", "model.init_std=0.2")
    r = torch.stack([block.attn.score_map.detach() for block in net.blocks])
    assert r.shape[1:] == (8, 48, 48)
    assert abs(r.std().item() - 0.02) < 0.001 and abs(r.mean().item()) < 0.001


def test_flops_count_q_r_on_top_of_k_eq_v():
    cfg, net = build()
    _, plain = build(variant="k_eq_v")
    H, dh, L = cfg.model.n_heads, cfg.model.d_model // cfg.model.n_heads, cfg.model.n_layers
    assert train_flops_per_token(net, 64) - train_flops_per_token(plain, 64) == L * 6 * H * dh * dh


def test_other_sharing_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="variant.family=keyless .* set variant.sharing=k_eq_v"):
        make_config("variant=keyless", "variant.sharing=mha")
