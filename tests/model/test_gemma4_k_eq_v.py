"""Gemma 4's K=V attention (variant=gemma4_k_eq_v): V = norm(S) without a gain, K = RoPE(k_norm(S)),
queries RMS-normed, scores at scale 1; qkvlab caches norm(S) once, half of mha's cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkvlab.errors import ConfigError
from qkvlab.model import build_model, count_params
from qkvlab.model.attention import from_pairs, rotate
from qkvlab.model.flops import matmul_params, train_flops_per_token
from qkvlab.model.kv_cache import KVCache

from tests.helpers import make_config


def model(*overrides: str):
    torch.manual_seed(0)
    net = build_model(make_config("data=mqar", "variant=gemma4_k_eq_v", "model.context=64", *overrides), vocab_size=50).eval()
    with torch.no_grad():  # gains away from 1, so a gain applied in the wrong place shows
        for block in net.blocks:
            block.attn.q_norm.weight.uniform_(0.5, 1.5)
            block.attn.k_norm.weight.uniform_(0.5, 1.5)
    return net


def rms(t: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)


def test_values_keys_and_queries_are_gemma4s():
    net = model()
    attn = net.blocks[0].attn
    x = net.blocks[0].norm1(net.tok_emb(torch.randint(0, 50, (2, 12))))
    rope = net.rope(0, 12)
    with torch.no_grad():
        p = attn.project(x)
        q, k, v = attn.qkv_from(p, rope)
        s = p["k"]
        torch.testing.assert_close(v, rms(s))
        torch.testing.assert_close(k, rotate(rms(s) * attn.k_norm.weight, rope.cos, rope.sin))
        torch.testing.assert_close(q, rotate(rms(p["q"]) * attn.q_norm.weight, rope.cos, rope.sin))
        # Scale 1: the scores are q . k, not divided by sqrt(d_head).
        scores = (q @ k.transpose(-1, -2)).masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 12, -1)
        torch.testing.assert_close(attn(x, rope), attn.out(y))


@pytest.mark.parametrize("positions,dtype", [("rope", torch.float32), ("rope", torch.bfloat16), ("learned", torch.float32)])
def test_cached_decoding_equals_full_recomputation(positions, dtype):
    net = model(f"model.positions={positions}").to(dtype)
    idx = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full = net(idx).float()
        cache = KVCache(net, batch=2, max_len=20)
        parts = [net(idx[:, :7], cache, 0), net(idx[:, 7:11], cache, 7)] + [net(idx[:, t : t + 1], cache, t) for t in range(11, 20)]
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=0.05)
    torch.testing.assert_close(torch.cat(parts, dim=1).float(), full, **tol)


def test_cache_holds_norm_s_once_per_kv_head_half_of_mha():
    net = model("variant.kv_group_size=2")
    idx = torch.randint(0, 50, (1, 10))
    cache = KVCache(net, batch=1, max_len=10)
    with torch.no_grad():
        net(idx, cache, 0)
        s = net.blocks[0].attn.project(net.blocks[0].norm1(net.tok_emb(idx)))["k"]
    (buf,) = cache[0].buffers  # one tensor per layer
    assert buf.shape == (1, 2, 10, 16)  # 4 query heads, GQA-2: 2 KV heads
    # Rotate-half as computed for the fused decode kernel; rotary pairs side by side for PyTorch's complex path.
    held = buf if net.blocks[0].attn.fused_decode(cache[0]) else from_pairs(buf)
    torch.testing.assert_close(held, rms(s))

    def measured(*overrides: str) -> int:
        return KVCache(build_model(make_config("data=mqar", *overrides), vocab_size=50), batch=1, max_len=16).nbytes

    assert 2 * measured("variant=gemma4_k_eq_v") == measured("variant=mha")


def test_parameters_are_k_eq_vs_plus_the_two_gains_and_flops_are_generic():
    g, k_eq_v = build_model(make_config("variant=gemma4_k_eq_v"), 10), build_model(make_config("variant=k_eq_v"), 10)
    layers, d_head, d_model = 2, 16, 64
    assert count_params(g)["params/attention"] == layers * (2 * d_model * d_model + d_model * d_model + 2 * d_head)
    assert count_params(g)["params/attention"] - count_params(k_eq_v)["params/attention"] == layers * 2 * d_head
    assert train_flops_per_token(g, 32) == 6 * matmul_params(g) + layers * 12 * 4 * d_head * 32


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["variant=k_eq_v", "variant.v_norm=true"], "variant.v_norm=true normalises values as Gemma 4 does"),
        (["variant=mla", "variant.score_scale=1.0"], "variant.family=mla does not combine with variant.score_scale"),
        (["variant=expanded", "variant.score_scale=1.0"], "variant.score_scale=1.0 is read only by variant.family=shared_qkv"),
        (["variant=mha", "variant.score_scale=0"], "variant.score_scale=0.0 is out of range; give a value > 0"),
    ],
)
def test_bad_combinations_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        make_config("data=mqar", *overrides)
    assert "\n" not in str(err.value)
