"""The asymmetric "+" variants against the study's formula (qkvlab/model/plus.py)."""

from __future__ import annotations

import math

import pytest
import torch

from qkvlab.cli import main
from qkvlab.data import IGNORE, build_data
from qkvlab.model import build_model, count_params
from qkvlab.model.flops import train_flops_per_token
from qkvlab.model.kv_cache import KVCache

from tests.helpers import make_config


def study_p(n: int, m: int = 10) -> torch.Tensor:
    """The study's P (build_2d_sincos), written out in plain Python: [f(i, m/2) | f(j, m - m/2)],
    f(t, n) column 2c = sin(t / 10000^(2c/n)), column 2c+1 = cos of the same angle."""

    def f(t: int, dim: int) -> list[float]:
        return [(math.sin if col % 2 == 0 else math.cos)(t / 10000 ** (2 * (col // 2) / dim)) for col in range(dim)]

    return torch.tensor([[f(i, m // 2) + f(j, m - m // 2) for j in range(n)] for i in range(n)], dtype=torch.float64)


def layer(*overrides: str, sharing: str = "q_eq_k"):
    torch.manual_seed(0)
    cfg = make_config("data=sort", "model=tiny", f"variant={sharing}", "variant.plus=true", *overrides)
    return build_model(cfg, vocab_size=10).double().blocks[0].attn


def qkv(B=2, H=4, T=9, d=16):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(B, H, T, d, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
def test_with_zero_weights_attention_is_uniform_over_unmasked_keys(causal):
    attn = layer()
    with torch.no_grad():
        attn.plus.weight.zero_()
        attn.plus.bias.zero_()
    q, k, v = qkv()
    y = attn.plus.attend(q, k, v, 0, causal, None, False, 0.0)
    T = v.shape[2]
    expected = v.cumsum(dim=2) / torch.arange(1, T + 1, dtype=v.dtype)[:, None] if causal else v.mean(dim=2, keepdim=True).expand_as(v)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("content", ["shared", "separate"])
@pytest.mark.parametrize("causal", [False, True])
def test_scores_output_and_gradients_follow_the_studys_formula(content, causal):
    """S' = S·Σw + Σ_c w_c P[i, j, c] + b (shared) or S·s + ... (separate), computed the slow way with
    the (T, T, m) tensor, against the fused SDPA path, gradients of w and the content scale included."""
    attn = layer(f"variant.plus_content_scale={content}")
    with torch.no_grad():
        attn.plus.weight.normal_()
        attn.plus.bias.fill_(0.3)
        if content == "separate":
            attn.plus.content_scale.fill_(0.7)
    q, k, v = qkv()
    T, d = q.shape[2], q.shape[3]
    S = q @ k.transpose(-1, -2) / math.sqrt(d)
    w, b = attn.plus.weight, attn.plus.bias
    factor = w.sum() if content == "shared" else attn.plus.content_scale
    expected_scores = S * factor + torch.einsum("ijm,m->ij", study_p(T), w) + b
    masked = expected_scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")) if causal else expected_scores
    expected = masked.softmax(dim=-1) @ v
    params = [p for p in attn.plus.parameters()]
    want = torch.autograd.grad(expected.square().sum(), params)
    y = attn.plus.attend(q, k, v, 0, causal, None, False, 0.0)
    got = torch.autograd.grad(y.square().sum(), params)
    torch.testing.assert_close(y, expected)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)
    torch.testing.assert_close(attn.plus.logits(q, k, 1 / math.sqrt(d)), expected_scores)


def asymmetry(scores: torch.Tensor) -> float:
    """mean |S - S^T| over mean |S|: 0 for a symmetric score matrix."""
    return float((scores - scores.transpose(-1, -2)).abs().mean() / scores.abs().mean())


@pytest.mark.parametrize("variant", ["q_eq_k", "q_eq_k_plus", "q_eq_k_eq_v_plus"])
def test_after_training_on_sort_plus_scores_are_no_longer_symmetric(variant):
    """From w = 0 and b = 0 (S' = 0: uniform and symmetric), a few steps on a bidirectional task make
    the "+" score matrices (bias included) asymmetric; plain Q=K's stay symmetric."""
    cfg = make_config("data=sort", "model=tiny", f"variant={variant}", "data.seq_len=16", "data.batch_size=16")
    torch.manual_seed(0)
    net = build_model(cfg, vocab_size=10)
    pluses = [b.attn.plus for b in net.blocks if b.attn.plus is not None]
    with torch.no_grad():
        for p in pluses:
            p.weight.zero_()
            p.bias.zero_()
    data = build_data(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for step in range(10):
        x, y = data.train_batch(step)
        loss = torch.nn.functional.cross_entropy(net(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, _ = data.train_batch(99)
    with torch.no_grad():
        attn = net.blocks[0].attn
        h = net.blocks[0].norm1(net.tok_emb(x))
        q, k, _ = attn.qkv_from(attn.project(h), net.rope(0, x.shape[1]))
        scale = 1 / math.sqrt(q.shape[-1])
        scores = attn.plus.logits(q, k, scale) if attn.plus is not None else q @ k.transpose(-1, -2) * scale
    if variant == "q_eq_k":
        assert asymmetry(scores) < 1e-6
    else:
        assert asymmetry(scores) > 0.05


@pytest.mark.parametrize("sharing", ["mha", "q_eq_k", "k_eq_v", "q_eq_k_eq_v"])
@pytest.mark.parametrize("content,extra", [("shared", 11), ("separate", 12)])
def test_parameters_are_the_sharings_plus_m_plus_one_per_layer(sharing, content, extra):
    """m + 1 = 11 per layer (w and b), 12 with a separate content scale; FLOPs do not count the bias."""
    base = make_config("data=sort", "model=small", f"variant={sharing}")
    plus = make_config("data=sort", "model=small", f"variant={sharing}", "variant.plus=true", f"variant.plus_content_scale={content}")
    a, b = build_model(base, 10), build_model(plus, 10)
    L = base.model.n_layers
    ca, cb = count_params(a), count_params(b)
    assert cb["params/attention"] - ca["params/attention"] == cb["params/total"] - ca["params/total"] == L * extra
    assert train_flops_per_token(b, 64) == train_flops_per_token(a, 64)


@pytest.mark.parametrize(
    "overrides",
    [
        ["variant=mha"],
        ["variant=k_eq_v_gqa"],  # one cached tensor in rotary pair layout, GQA
        ["variant=q_eq_k_eq_v_plus", "model.positions=learned"],
        ["variant=q_eq_k_plus", "variant.plus_content_scale=separate"],
        ["variant=k_eq_v_cla"],  # a layer reusing another's K/V keeps its own "+" term
    ],
)
def test_cached_decoding_equals_recomputation_with_a_large_plus_term(overrides):
    """Weights of order 1 (not the init's 0.02) so a wrong row of the bias would show."""
    cfg = make_config("data=mqar", "model.context=64", "variant.plus=true", *overrides)
    torch.manual_seed(0)
    net = build_model(cfg, vocab_size=50).eval()
    with torch.no_grad():
        for block in net.blocks:
            block.attn.plus.weight.normal_()
            block.attn.plus.bias.normal_()
    idx = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full = net(idx)
        cache = KVCache(net, batch=2, max_len=20)
        parts = [net(idx[:, :7], cache, 0), net(idx[:, 7:12], cache, 7)]
        parts += [net(idx[:, t : t + 1], cache, t) for t in range(12, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["variant.plus=maybe"], "variant.plus: Value 'maybe' is not a valid bool"),
        (["variant.plus_content_scale=both"], "variant.plus_content_scale='both' is not valid; choose one of: shared, separate"),
        (["variant.plus_content_scale=separate"], "variant.plus_content_scale=separate is read only with variant.plus=true"),
        (["variant=differential", "variant.plus=true"], "variant.plus=true adds the study's positional term"),
        (["variant=mla", "variant.plus=true"], "variant.family=mla computes its own"),
    ],
)
def test_bad_plus_settings_are_one_line_at_start_up(overrides, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "data=sort", *overrides])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("qkvlab: error: ") and message in err, err
