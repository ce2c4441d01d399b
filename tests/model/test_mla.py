"""Multi-head latent attention against DeepSeek-V2's definition (arXiv 2405.04434, section 2.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkvlab.errors import ConfigError
from qkvlab.model import build_model, count_params
from qkvlab.model.attention import rotate
from qkvlab.model.flops import matmul_params, train_flops_per_token
from qkvlab.model.kv_cache import KVCache

from tests.helpers import make_config


def model(*overrides: str):
    torch.manual_seed(0)
    net = build_model(make_config("data=mqar", "variant=mla", "model.context=64", *overrides), vocab_size=50).eval()
    with torch.no_grad():  # gains away from 1, so a gain applied in the wrong place shows
        for block in net.blocks:
            block.attn.kv_norm.weight.uniform_(0.5, 1.5)
    return net


def test_defaults_are_deepseek_ratios_scaled_to_the_head():
    """DeepSeek-V2: d_c = 4 d_h = 512, d_h^R = d_h / 2 = 64 at d_h = 128; the score over d_h + d_h^R."""
    for size, d_head in (("tiny", 16), ("small", 48)):
        attn = build_model(make_config("variant=mla", f"model={size}"), vocab_size=50).blocks[0].attn
        assert (attn.kv_rank, attn.rope_dim) == (4 * d_head, d_head // 2)
        assert attn.score_scale == 1 / math.sqrt(d_head + d_head // 2)


def reference(attn, x, rope):
    """The paper's equations head by head, with an explicit causal softmax."""
    B, T, _ = x.shape
    H, d, R, r = attn.spec.n_heads, attn.spec.d_head, attn.kv_rank, attn.rope_dim
    q = (x @ attn.q.weight.T).view(B, T, H, d + r)
    c, k_r = (x @ attn.kv_down.weight.T).split([R, r], dim=-1)
    c = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + attn.spec.norm_eps) * attn.kv_norm.weight
    k_r = rotate(k_r, rope.cos, rope.sin)  # (B, T, r): one RoPE key for every head
    kv = (c @ attn.kv_up.weight.T).view(B, T, H, 2 * d)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    heads = []
    for h in range(H):
        q_c, q_r = q[:, :, h, :d], rotate(q[:, :, h, d:], rope.cos, rope.sin)
        k_c, v = kv[:, :, h, :d], kv[:, :, h, d:]
        s = (q_c @ k_c.transpose(1, 2) + q_r @ k_r.transpose(1, 2)) / math.sqrt(d + r)
        heads.append(s.masked_fill(~mask, float("-inf")).softmax(-1) @ v)
    return torch.cat(heads, dim=-1) @ attn.out.weight.T


def test_attention_is_the_papers_equations():
    net = model()
    attn = net.blocks[0].attn
    x = net.blocks[0].norm1(net.tok_emb(torch.randint(0, 50, (2, 12))))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, net.rope(0, 12)), reference(attn, x, net.rope(0, 12)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads", [2, 4, 8])
def test_cache_holds_latent_and_rope_key_whatever_the_head_count(heads):
    net = model(f"model.n_heads={heads}", "variant.kv_rank=24", "variant.rope_dim=4")
    idx = torch.randint(0, 50, (1, 10))
    cache = KVCache(net, batch=1, max_len=10)
    with torch.no_grad():
        net(idx, cache, 0)
        x = net.blocks[0].norm1(net.tok_emb(idx))
        attn = net.blocks[0].attn
        c, k_r = attn.kv_down(x).split([24, 4], dim=-1)
        expected = torch.cat((attn.kv_norm(c), rotate(k_r, *net.rope(0, 10)[:2])), dim=-1)
    assert [tuple(b.shape) for b in cache[0].buffers] == [(1, 1, 10, 28)]
    torch.testing.assert_close(cache[0].buffers[0][0, 0], expected[0])
    assert cache.bytes_per_token() == 2 * (24 + 4) * 4


@pytest.mark.parametrize("overrides", [[], ["model.n_heads=2", "variant.kv_rank=24", "variant.rope_dim=4"]])
def test_absorbed_decoding_equals_full_recomputation(overrides):
    """Decoding never up-projects the cache: W_UK goes into the query, W_UV after the mixing."""
    net = model(*overrides)
    idx = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full = net(idx)
        cache = KVCache(net, batch=2, max_len=20)
        parts = [net(idx[:, :7], cache, 0), net(idx[:, 7:11], cache, 7)] + [net(idx[:, t : t + 1], cache, t) for t in range(11, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_parameters_and_flops_follow_the_closed_form(size):
    cfg = make_config("variant=mla", f"model={size}")
    m = cfg.model
    D, H, L, T = m.d_model, m.n_heads, m.n_layers, cfg.data.seq_len
    d = D // H
    R, r = 4 * d, d // 2
    # W_Q and W_QR, W_DKV and W_KR, the latent's gain, W_UK and W_UV, W_O.
    per_layer = D * H * (d + r) + D * (R + r) + R + R * H * 2 * d + H * d * D
    mla, mha = build_model(cfg, 128), build_model(make_config("variant=mha", f"model={size}"), 128)
    assert count_params(mla)["params/attention"] == L * per_layer
    assert count_params(mla)["params/total"] - count_params(mha)["params/total"] == L * (per_layer - 4 * D * D)
    assert matmul_params(mla) - matmul_params(mha) == L * (per_layer - R - 4 * D * D)
    # QK^T over d + r and AV over d per head, times 2 (multiply-add) and 3 (forward and backward).
    assert train_flops_per_token(mla, T) == 6 * matmul_params(mla) + L * 6 * H * (2 * d + r) * T


def test_parameter_matching_targets_plain_mha():
    def total(*overrides):
        with torch.device("meta"):
            net = build_model(make_config("model=small", *overrides), 50304)
        return count_params(net)["params/total"], net.cfg.d_ff

    target, _ = total("variant=mha")
    plain, _ = total("variant=mla")
    matched, d_ff = total("variant=mla", "model.match_params=mlp")
    assert plain != target and d_ff != 1024
    assert abs(matched - target) <= 6 * 3 * 384 / 2


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["variant.sharing=k_eq_v"], "variant.sharing"),
        (["variant.kv_group_size=2"], "variant.kv_group_size"),
        (["variant.n_kv_heads=1"], "variant.n_kv_heads"),
        (["variant.share_every=2"], "variant.share_every"),
        (["variant.qk_norm=true"], "variant.qk_norm"),
        (["model.positions=learned"], "model.positions=rope"),
        (["variant.rope_dim=3"], "variant.rope_dim=3"),
        (["variant.kv_rank=0"], "variant.kv_rank=0"),
    ],
)
def test_what_it_cannot_take_is_one_line(overrides, key):
    with pytest.raises(ConfigError, match="variant.family=mla|out of range|even") as err:
        make_config("data=mqar", "variant=mla", *overrides)
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["kv_rank=32", "rope_dim=8"])
def test_its_keys_on_another_family_are_refused(key):
    with pytest.raises(ConfigError, match=f"variant.{key} is read only by variant.family=mla"):
        make_config("variant=mha", f"variant.{key}")
