"""Loop attention against its definition (IQuest-Coder-V1 Loop): two passes over one stack, the
second blending global attention over the first pass's K/V with windowed attention over its own."""

from __future__ import annotations

import math

import pytest
import torch

from qkvlab.errors import ConfigError
from qkvlab.model import build_model, count_params
from qkvlab.model.flops import matmul_params, train_flops_per_token
from qkvlab.model.kv_cache import KVCache

from tests.helpers import make_config

VOCAB = 50


def model(*overrides: str, data: str = "mqar"):
    torch.manual_seed(0)
    return build_model(make_config(f"data={data}", "variant=loop", *overrides), vocab_size=VOCAB).eval()


def set_gates(net, bias: float, weight_std: float = 0.0) -> None:
    with torch.no_grad():
        for block in net.blocks:
            block.attn.gate_bias.fill_(bias)
            block.attn.gate_weight.normal_(std=weight_std) if weight_std else block.attn.gate_weight.zero_()


def reference(net, idx, window: int, causal: bool = True):
    """The definition written out with explicit softmaxes, from the model's Linear and norm layers:
    pass 1 is plain attention; pass 2 (input: pass 1's output) mixes softmax(q2 k1^T) v1 and
    softmax(q2 k2^T) v2 within the window by g = sigmoid(w_h . q2 + b_h); logits from pass 2."""
    B, T = idx.shape
    H = net.cfg.n_heads
    dh = net.cfg.d_model // H
    cos, sin = net.rope_cos[:T], net.rope_sin[:T]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    full = (j <= i) if causal else torch.ones(T, T, dtype=torch.bool)
    band = full & ((i - j).abs() < window)

    def heads(t):
        return t.view(B, T, -1, dh).transpose(1, 2)

    def rot(t):
        t1, t2 = t[..., : dh // 2], t[..., dh // 2 :]
        return t * cos + torch.cat((-t2, t1), dim=-1) * sin

    def attend(q, k, v, allowed):
        k, v = (t.repeat_interleave(H // t.shape[1], dim=1) for t in (k, v))
        s = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(~allowed, float("-inf"))
        return s.softmax(-1) @ v

    def qkv(block, x):
        attn = block.attn
        q, k, v = attn.qkv(block.norm1(x)).split(attn.split, dim=-1)
        return rot(heads(q)), rot(heads(k)), heads(v)

    def finish(block, x, y):
        x = x + block.attn.out(y.transpose(1, 2).reshape(B, T, -1))
        return x + block.mlp(block.norm2(x))

    x = net.tok_emb(idx)
    first = []
    for block in net.blocks:
        q, k, v = qkv(block, x)
        first.append((k, v))
        x = finish(block, x, attend(q, k, v, full))
    for block, (k1, v1) in zip(net.blocks, first):
        q, k, v = qkv(block, x)
        g = torch.sigmoid((q * block.attn.gate_weight[:, None]).sum(-1, keepdim=True) + block.attn.gate_bias[:, None, None])
        glob = attend(q, k1, v1, full)
        y = glob if bool((g == 1).all()) else g * glob + (1 - g) * attend(q, k, v, band)
        x = finish(block, x, y)
    return net.head(net.norm(x))


def test_gate_forced_to_global_is_the_second_pass_cross_attending_the_first_pass_kv():
    """b_h = +inf: g = 1 exactly, so each layer of pass 2 is softmax(Q2 K1^T / sqrt(d_head)) V1: its own
    queries over the first pass's keys and values of the same layer (the window no longer matters)."""
    net = model()
    set_gates(net, float("inf"))
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(net(idx), reference(net, idx, window=64), rtol=1e-5, atol=1e-5)


def test_gate_forced_to_local_with_a_window_covering_the_sequence_is_the_mha_stack_run_twice():
    """b_h = -inf and window >= T: pass 2 is plain self-attention, so the model is `mha` (same weights)
    applied twice over the stack, pass 2 fed pass 1's output: a plain looped transformer."""
    net = model("variant.window=12")
    set_gates(net, float("-inf"))
    mha = build_model(make_config("data=mqar", "variant=mha"), vocab_size=VOCAB).eval()
    mha.load_state_dict({k: v for k, v in net.state_dict().items() if ".gate_" not in k})
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        x, rope = mha.tok_emb(idx), mha.rope(0, 12)
        for block in [*mha.blocks, *mha.blocks]:
            x = block(x, rope)
        torch.testing.assert_close(net(idx), mha.head(mha.norm(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("data,causal", [("mqar", True), ("sort", False)])
@pytest.mark.parametrize("group", [1, 2])
def test_learned_gate_and_a_short_window_follow_the_definition(data, causal, group):
    net = model("variant.window=4", f"variant.kv_group_size={group}", data=data)
    set_gates(net, 0.3, weight_std=0.5)
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(net(idx), reference(net, idx, window=4, causal=causal), rtol=1e-5, atol=1e-5)


def test_gate_starts_towards_global():
    net = model()
    q = torch.randn(1, 4, 3, 16)
    assert bool((net.blocks[0].attn.gate(q) > 0.8).all())


def test_causal_with_a_short_window():
    net = model("variant.window=3")
    set_gates(net, 0.0, weight_std=0.5)
    x = torch.randint(0, VOCAB, (2, 16))
    y = x.clone()
    y[:, 8:] = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        a, b = net(x), net(y)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_passes_share_weights_parameters_are_mha_plus_the_gates():
    net, mha = model(), build_model(make_config("data=mqar", "variant=mha"), vocab_size=VOCAB)
    H, dh, L = 4, 16, 2
    assert net.passes == 2 and len(net.blocks) == L
    assert count_params(net)["params/total"] - count_params(mha)["params/total"] == L * (H * dh + H)
    assert count_params(net)["params/attention"] - count_params(mha)["params/attention"] == L * (H * dh + H)


def test_flops_count_every_block_twice_and_both_second_pass_score_terms():
    net, mha = model(), build_model(make_config("data=mqar", "variant=mha"), vocab_size=VOCAB)
    d, f, H, dh, L, T, w = 64, 256, 4, 16, 2, 128, 64
    block_matmul = 4 * d * d + 3 * d * f  # W_QKV, W_O, SwiGLU up (2f) and down
    assert matmul_params(net.blocks) == L * block_matmul
    extra = 6 * L * block_matmul + L * (12 * H * dh * (T + w) + 6 * H * dh)
    assert train_flops_per_token(net, T) - train_flops_per_token(mha, T) == extra
    # A window wider than the context costs the context, not the window.
    assert net.blocks[0].attn.score_flops_per_token(8) == 12 * H * dh * 8 * 3 + 6 * H * dh


def test_cache_holds_both_passes_kv_and_decoding_with_a_short_window_matches_recomputation():
    net = model("variant.window=5", "variant.kv_group_size=2", "model.context=64")
    set_gates(net, 0.0, weight_std=0.5)
    idx = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        full = net(idx)
        cache = KVCache(net, batch=2, max_len=24)
        parts = [net(idx[:, :9], cache, 0), net(idx[:, 9:14], cache, 9)]
        parts += [net(idx[:, t : t + 1], cache, t) for t in range(14, 24)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)
    assert [b.shape for b in cache[0].buffers] == [(2, 2, 24, 16)] * 4  # K1 V1 K2 V2, 2 KV heads
    assert cache.bytes_per_token() == 2 * 4 * 2 * 16 * 4  # layers * tensors * kv heads * d_head * fp32


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["variant.sharing=k_eq_v"], "variant.family=loop needs sharing mha"),
        (["variant.share_every=2"], "variant.family=loop does not take share_every"),
        (["variant.window=0"], "variant.window=0 is read only by variant.family=loop"),
    ],
)
def test_what_it_cannot_combine_with_is_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_config("data=mqar", "variant=loop", *overrides)


def test_window_on_another_family_is_refused():
    with pytest.raises(ConfigError, match="variant.window=8 is read only by variant.family=loop"):
        make_config("data=mqar", "variant=mha", "variant.window=8")
