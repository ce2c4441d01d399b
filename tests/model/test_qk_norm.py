"""QK-norm: queries and keys are RMS-normalised over d_head before RoPE; values never are."""

from __future__ import annotations

import math

import pytest
import torch

from qkvlab.model import build_model, count_params

from tests.helpers import make_config


@pytest.mark.parametrize("variant", ["mha", "k_eq_v", "q_eq_k"])
def test_queries_and_keys_have_unit_rms_and_values_stay_raw(variant):
    torch.manual_seed(0)
    model = build_model(make_config("data=mqar", f"variant={variant}", "variant.qk_norm=true"), vocab_size=50).eval()
    attn = model.blocks[0].attn
    x = model.blocks[0].norm1(model.tok_emb(torch.randint(0, 50, (2, 12))))
    with torch.no_grad():
        p = attn.project(x)
        q, k, v = attn.qkv_from(p, model.rope(0, 12))
    d = attn.spec.d_head
    # RoPE preserves each vector's length, so normalised-then-rotated rows have length sqrt(d_head)
    # (less the eps in the norm's denominator, a few parts in 10^4 at init scale).
    for t in (q, k):
        torch.testing.assert_close(t.norm(dim=-1), torch.full(t.shape[:-1], math.sqrt(d)), rtol=3e-3, atol=0)
    raw = p.get("v", p["k"])
    torch.testing.assert_close(v, raw, rtol=0, atol=0)
    assert not torch.allclose(v.norm(dim=-1), torch.full(v.shape[:-1], math.sqrt(d)), rtol=1e-2)


def test_qk_norm_adds_two_gains_per_layer_and_none_without_a_query_projection():
    base = count_params(build_model(make_config("variant=mha"), 10))["params/attention"]
    normed = count_params(build_model(make_config("variant=mha", "variant.qk_norm=true"), 10))["params/attention"]
    assert normed - base == 2 * 2 * 16  # two layers, q and k gains of d_head
    qk = build_model(make_config("variant=q_eq_k", "variant.qk_norm=true"), 10)
    assert qk.blocks[0].attn.q_norm is None and qk.blocks[0].attn.k_norm is not None
