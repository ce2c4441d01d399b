"""K=V conversion of a trained model's weights (qkvlab/model/convert.py), in-process on model=tiny."""

from __future__ import annotations

import pytest
import torch

from qkvlab.errors import ConfigError
from qkvlab.model import build_model
from qkvlab.model.convert import converted_state, fit_value_maps
from qkvlab.train.init_from import check_fits
from tests.helpers import make_config

PAIRS = [("mha", "k_eq_v"), ("gqa", "k_eq_v_gqa")]


def _pair(source: str, target: str, *extra: str):
    torch.manual_seed(0)
    src = build_model(make_config(f"variant={source}", *extra), 10).eval()
    dst = build_model(make_config(f"variant={target}", *extra), 10).eval()
    return src, dst


def _kv_rows(attn):
    d = attn.spec.d_head
    q, kv = attn.spec.n_heads * d, attn.spec.n_kv_heads * d
    return slice(q, q + kv), slice(q + kv, q + 2 * kv)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("source,target", PAIRS)
def test_mixing_equal_k_and_v_reproduces_the_logits_exactly(source, target, alpha):
    src, dst = _pair(source, target)
    with torch.no_grad():
        for block in src.blocks:
            k, v = _kv_rows(block.attn)
            block.attn.qkv.weight[v] = block.attn.qkv.weight[k]
    dst.load_state_dict(converted_state(src, dst, alpha))
    x = torch.randint(0, 10, (2, 16))
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


@pytest.mark.parametrize(
    "source,target,extra", [("mha", "k_eq_v", ()), ("gqa", "k_eq_v_gqa", ("model.bias=true",)), ("cla", "k_eq_v_cla", ())]
)
def test_fit_folds_an_exact_linear_map_of_keys_to_values_into_the_output(source, target, extra):
    """V = K·M + c per KV head in the source: the fitted conversion gives the source's logits."""
    src, dst = _pair(source, target, *extra)
    d = src.spec.d_head
    with torch.no_grad():
        for block in src.blocks:
            attn = block.attn
            if attn.reuses:  # reads the producer's values, so it folds the producer's map
                continue
            k, v = _kv_rows(attn)
            for g in range(attn.spec.n_kv_heads):
                M, c = torch.randn(d, d) / d**0.5, torch.randn(d) * 0.1
                rows_k = slice(k.start + g * d, k.start + (g + 1) * d)
                rows_v = slice(v.start + g * d, v.start + (g + 1) * d)
                attn.qkv.weight[rows_v] = M.T @ attn.qkv.weight[rows_k]
                if attn.qkv.bias is not None:
                    attn.qkv.bias[rows_k] = torch.randn(d) * 0.1
                    attn.qkv.bias[rows_v] = attn.qkv.bias[rows_k] @ M + c
    inputs = [torch.randint(0, 10, (8, 16)) for _ in range(4)]
    maps = fit_value_maps(src, inputs, with_intercept=src.cfg.bias)
    dst.load_state_dict(converted_state(src, dst, "fit", maps))
    x = torch.randint(0, 10, (2, 16))
    with torch.no_grad():
        assert torch.allclose(dst(x), src(x), atol=1e-4)
        assert not torch.allclose(build_model(make_config(f"variant={target}", *extra), 10).eval()(x), src(x), atol=1e-2)


def test_random_keeps_the_targets_fresh_w_kv_and_copies_the_rest():
    src, dst = _pair("mha", "k_eq_v")
    fresh = dst.state_dict()
    state = converted_state(src, dst, "random")
    q = src.spec.n_heads * src.spec.d_head
    assert torch.equal(state["blocks.0.attn.qkv.weight"][q:], fresh["blocks.0.attn.qkv.weight"][q:])
    assert torch.equal(state["blocks.0.attn.qkv.weight"][:q], src.state_dict()["blocks.0.attn.qkv.weight"][:q])
    assert torch.equal(state["blocks.1.mlp.up.weight"], src.state_dict()["blocks.1.mlp.up.weight"])


def test_a_shape_mismatch_is_one_line_naming_the_parameters():
    src = build_model(make_config("variant=mha"), 10)
    other = build_model(make_config("variant=mha", "model.d_ff=128"), 10)
    with pytest.raises(ConfigError) as err:
        check_fits(src.state_dict(), other, "runs/a")
    line = str(err.value)
    assert "\n" not in line and "init_from=runs/a" in line
    assert "blocks.0.mlp.up.weight ((512, 64) -> (256, 64))" in line
