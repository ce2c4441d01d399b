"""The KV cache is exact (decoding == recomputation) and as small as the design says."""

from __future__ import annotations

import pytest
import torch

from qkvlab.cli import CONF_DIR
from qkvlab.config import Config
from qkvlab.model import build_model, kv_cache_bytes_per_token
from qkvlab.model.attention import from_pairs
from qkvlab.model.kernels import cpu_decode
from qkvlab.model.kv_cache import KVCache
from qkvlab.model.latent import LatentAttention

from tests.helpers import make_config

VARIANTS = sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml"))


def causal_cfg(variant: str, *overrides: str) -> Config:
    return make_config("data=mqar", f"variant={variant}", "model.d_ff=128", "model.context=64", *overrides)


CASES = [(v, "rope") for v in VARIANTS] + [("mha", "learned"), ("k_eq_v_gqa", "learned")]


@pytest.mark.parametrize("variant,positions", CASES)
def test_cached_decoding_matches_full_recomputation(variant, positions):
    torch.manual_seed(0)
    model = build_model(causal_cfg(variant, f"model.positions={positions}"), vocab_size=50).eval()
    idx = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model, batch=2, max_len=24)
        # A multi-token prefill, a multi-token chunk at an offset, then one token at a time.
        parts = [model(idx[:, :9], cache, 0), model(idx[:, 9:14], cache, 9)]
        parts += [model(idx[:, t : t + 1], cache, t) for t in range(14, 24)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_measured_cache_bytes_equal_closed_form(variant):
    model = build_model(causal_cfg(variant), vocab_size=50)
    for dtype in (torch.float32, torch.bfloat16):
        cache = KVCache(model, batch=3, max_len=40, dtype=dtype)
        assert cache.bytes_per_token() == kv_cache_bytes_per_token(model, dtype) == expected_cache_bytes(model, dtype)


def expected_cache_bytes(model, dtype) -> int:
    """Written apart from the model: layers that compute their own K/V cache K and V, or one S when V = K,
    once per pass over the stack (loop attention's second pass caches its own K and V); MLA layers cache
    their latent and RoPE key (4 d_head + d_head / 2 by default) whatever the head count."""
    spec, n = model.spec, len(model.blocks)
    if isinstance(model.blocks[0].attn, LatentAttention):
        per_layer = (spec.kv_rank or 4 * spec.d_head) + (spec.rope_dim or spec.d_head // 2)
        return n * per_layer * torch.empty((), dtype=dtype).element_size()
    if spec.kv_shared_layers:
        computing = n - spec.kv_shared_layers
    else:
        computing = -(-n // spec.share_every)
    tensors = 2 if spec.sharing in ("mha", "q_eq_k") else 1
    return model.passes * computing * tensors * spec.n_kv_heads * spec.d_head * torch.empty((), dtype=dtype).element_size()


@pytest.mark.parametrize("kernel", ["auto", "off"])
def test_k_eq_v_caches_one_unrotated_tensor_per_kv_head(kernel, monkeypatch):
    """With the fused decode kernel S is cached as computed; on the PyTorch path (fp32) with its rotary
    pairs side by side, for the complex rotation."""
    monkeypatch.setenv("QKVLAB_DECODE_KERNEL", kernel)
    torch.manual_seed(0)
    model = build_model(causal_cfg("k_eq_v_gqa"), vocab_size=50).eval()
    idx = torch.randint(0, 50, (1, 8))
    cache = KVCache(model, batch=1, max_len=8)
    with torch.no_grad():
        model(idx, cache, 0)
        attn = model.blocks[0].attn
        s = attn.project(model.blocks[0].norm1(model.tok_emb(idx)))["k"]
    (buf,) = cache[0].buffers
    assert buf.shape == (1, 1, 8, 16)  # 4 heads / GQA-4 = 1 KV head
    assert attn.fused_decode(cache[0]) == (kernel == "auto" and cpu_decode.available())
    torch.testing.assert_close(buf if attn.fused_decode(cache[0]) else from_pairs(buf), s)


@pytest.mark.parametrize("variant", ["k_eq_v", "q_eq_k_eq_v", "mha"])
def test_bf16_decoding_matches_bf16_recomputation(variant):
    """bf16 has no complex twin, so the single-tensor cache takes the rotate-half path there."""
    torch.manual_seed(0)
    model = build_model(causal_cfg(variant), vocab_size=50).eval().to(torch.bfloat16)
    idx = torch.randint(0, 50, (1, 16))
    with torch.no_grad():
        full = model(idx).float()
        cache = KVCache(model, batch=1, max_len=16)
        parts = [model(idx[:, :8], cache, 0)] + [model(idx[:, t : t + 1], cache, t) for t in range(8, 16)]
    assert cache[0].dtype == torch.bfloat16
    torch.testing.assert_close(torch.cat(parts, dim=1).float(), full, rtol=0.05, atol=0.05)


def test_cache_bytes_shrink_as_the_study_claims():
    """At 16 heads: k_eq_v 1/2, k_eq_v + GQA-4 1/8, k_eq_v + MQA 1/(2*16) of mha."""
    def measured(variant):
        model = build_model(causal_cfg(variant, "model.n_heads=16", "model.d_model=256"), vocab_size=50)
        return KVCache(model, batch=1, max_len=16).nbytes

    mha = measured("mha")
    assert measured("k_eq_v") * 2 == mha
    assert measured("k_eq_v_gqa") * 8 == mha
    assert measured("k_eq_v_mqa") * 32 == mha


def test_bidirectional_model_has_no_cache():
    cfg = causal_cfg("mha", "data=sort")
    with pytest.raises(ValueError, match="causal"):
        KVCache(build_model(cfg, vocab_size=10), batch=1, max_len=8)
