import pytest
import torch

from qkvlab.config import CONF_DIR
from qkvlab.model import build_model, count_params
from qkvlab.model.transformer import kv_cache_bytes_per_token

from tests.helpers import make_config

SHARINGS = ["mha", "q_eq_k", "k_eq_v", "q_eq_k_eq_v"]
VARIANTS = SHARINGS + ["gqa", "mqa", "k_eq_v_gqa", "k_eq_v_mqa", "cla", "k_eq_v_cla", "kv_shared"]
EVERY_VARIANT = sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml"))


def expected_params(m, sharing: str, n_kv: int, vocab: int, reusing: int = 0) -> tuple[int, int]:
    """Closed-form (total, attention) parameter counts, written independently of the model code.
    `reusing` layers take another layer's K/V: they hold only W_Q and W_O."""
    d, H, f, L = m.d_model, m.n_heads, m.d_ff, m.n_layers
    dh = d // H
    heads = {"mha": H + 2 * n_kv, "q_eq_k": 2 * n_kv, "k_eq_v": H + n_kv, "q_eq_k_eq_v": n_kv}[sharing]
    b = 1 if m.bias else 0
    per_layer = lambda h: d * h * dh + b * h * dh + H * dh * d + b * d  # noqa: E731
    attn = per_layer(heads) * (L - reusing) / L + per_layer(H) * reusing / L
    norm = d * (2 if (m.norm == "layernorm" and m.bias) else 1)
    up = f * (2 if m.mlp == "swiglu" else 1)
    mlp = d * up + b * up + f * d + b * d
    total = vocab * d + (m.context * d if m.positions == "learned" else 0) + L * (attn + 2 * norm + mlp) + norm
    total += 0 if m.tie_embeddings else vocab * d
    return total, L * attn


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", ["tiny", "small"])
def test_param_count_matches_closed_form(variant, model):
    cfg = make_config(f"variant={variant}", f"model={model}", "data=mqar")
    net = build_model(cfg, vocab_size=128)
    from qkvlab.config import n_kv_heads

    v, L = cfg.variant, cfg.model.n_layers
    reusing = v.kv_shared_layers if v.kv_shared_layers else L - -(-L // v.share_every)
    total, attn = expected_params(cfg.model, v.sharing, n_kv_heads(cfg), 128, reusing)
    assert count_params(net) == {"params/total": total, "params/attention": attn}


def test_sharing_saves_parameters():
    counts = {v: count_params(build_model(make_config(f"variant={v}"), 10))["params/attention"] for v in SHARINGS}
    assert counts["mha"] > counts["k_eq_v"] == counts["q_eq_k"] > counts["q_eq_k_eq_v"]


@pytest.mark.parametrize("variant", EVERY_VARIANT)
@pytest.mark.parametrize("positions", ["rope", "learned", "none"])
def test_causal_output_ignores_future_tokens(variant, positions):
    torch.manual_seed(0)
    if variant == "mla" and positions != "rope":
        pytest.skip("mla needs model.positions=rope (its decoupled RoPE key); refused at start-up")
    cfg = make_config(f"variant={variant}", "data=mqar", f"model.positions={positions}")
    net = build_model(cfg, vocab_size=128).eval()
    x = torch.randint(0, 128, (2, 24))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        a, b = net(x), net(y)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_bidirectional_output_sees_future_tokens():
    net = build_model(make_config("data=sort"), vocab_size=10).eval()
    x = torch.randint(0, 10, (1, 16))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 10
    with torch.no_grad():
        assert not torch.allclose(net(x)[:, 0], net(y)[:, 0])


def _copy_shared(src, dst, mapping):
    """Copy src attention weights into dst (mha layout: rows q | k | v) following `mapping`."""
    sd = dst.state_dict()
    for key, value in src.state_dict().items():
        if key.endswith("attn.qkv.weight") or key.endswith("attn.qkv.bias"):
            sd[key] = mapping(value)
        else:
            sd[key] = value
    dst.load_state_dict(sd)


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("causal_data", ["mqar", "sort"])
def test_k_eq_v_equals_mha_with_value_weights_copied_from_keys(positions, causal_data):
    torch.manual_seed(0)
    over = [f"data={causal_data}", f"model.positions={positions}", "model.bias=true"]
    kv = build_model(make_config("variant=k_eq_v", *over), 128).eval()
    mha = build_model(make_config("variant=mha", *over), 128).eval()
    d = kv.cfg.d_model
    _copy_shared(kv, mha, lambda w: torch.cat([w[:d], w[d : 2 * d], w[d : 2 * d]], dim=0))
    x = torch.randint(0, 10, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(kv(x), mha(x))


@pytest.mark.parametrize("positions", ["rope", "learned", "none"])
def test_q_eq_k_scores_are_symmetric_before_masking(positions):
    torch.manual_seed(0)
    net = build_model(make_config("variant=q_eq_k", "data=mqar", f"model.positions={positions}"), 128)
    attn = net.blocks[0].attn
    x = torch.randn(2, 12, net.cfg.d_model)
    q, k, _ = attn.qkv_from(attn.project(x), net.rope(0, 12))
    scores = q @ k.transpose(-1, -2)
    torch.testing.assert_close(scores, scores.transpose(-1, -2))


@pytest.mark.parametrize("variant,sharing", [("gqa", "mha"), ("mqa", "mha"), ("k_eq_v_gqa", "k_eq_v"), ("k_eq_v_mqa", "k_eq_v")])
def test_head_sharing_equals_full_heads_with_repeated_kv_weights(variant, sharing):
    torch.manual_seed(0)
    over = ["data=mqar", "model.n_heads=8", "model.bias=true"]
    shared = build_model(make_config(f"variant={variant}", *over), 128).eval()
    full = build_model(make_config(f"variant={sharing}", *over), 128).eval()
    spec = shared.spec
    dh, H, kv = spec.d_head, spec.n_heads, spec.n_kv_heads
    group = H // kv

    def expand(w):
        q, rest = w[: H * dh], w[H * dh :]
        tensors = rest.split(kv * dh)  # k (and v)
        repeated = [t.view(kv, dh, *t.shape[1:]).repeat_interleave(group, dim=0).reshape(H * dh, *t.shape[1:]) for t in tensors]
        return torch.cat([q, *repeated], dim=0)

    _copy_shared(shared, full, expand)
    x = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(shared(x), full(x))


@pytest.mark.parametrize(
    "variant,reduction",
    [("mha", 0.0), ("q_eq_k", 0.0), ("k_eq_v", 0.5), ("q_eq_k_eq_v", 0.5), ("gqa", 0.75), ("k_eq_v_gqa", 0.875),
     ("k_eq_v_mqa", 1 - 1 / 32), ("cla", 0.5), ("k_eq_v_cla", 0.75), ("kv_shared", 0.05)],
)
def test_kv_cache_bytes_per_token(variant, reduction):
    """The savings multiply: K=V halves, GQA-4 quarters, CLA2 halves again (20 layers of paper_300m)."""
    cfg = make_config(f"variant={variant}", "model=paper_300m", "data=mqar")
    with torch.device("meta"):
        model = build_model(cfg, vocab_size=128)
    mha_bytes = 20 * 2 * 1024 * 4  # layers * (K and V) * d_model * fp32
    assert kv_cache_bytes_per_token(model, torch.float32) == pytest.approx(mha_bytes * (1 - reduction))
    assert kv_cache_bytes_per_token(model, torch.bfloat16) * 2 == kv_cache_bytes_per_token(model, torch.float32)


def test_rope_forward_and_hand_written_backward_are_the_textbook_rotation():
    from qkvlab.model.attention import rotate

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    half = torch.rand(5, 4, dtype=torch.float64) * 3
    angles = torch.cat((half, half), -1)
    cos, sin = angles.cos(), angles.sin()
    textbook = x * cos + torch.cat((-x[..., 4:], x[..., :4]), -1) * sin
    torch.testing.assert_close(rotate(x, cos, sin), textbook)
    assert torch.autograd.gradcheck(lambda t: rotate(t, cos, sin), (x,))
    # Under autocast the input is bf16 and the tables fp32: the gradient comes back in the input's dtype.
    xb = torch.randn(1, 1, 5, 8, dtype=torch.bfloat16, requires_grad=True)
    rotate(xb, cos.float(), sin.float()).sum().backward()
    assert xb.grad.dtype == torch.bfloat16
