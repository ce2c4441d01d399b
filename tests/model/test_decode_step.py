"""The whole-token decode step gives the modules' logits and cache to the bit, and steps aside for
every model it does not cover."""

from __future__ import annotations

import pytest
import torch

from qkvlab.model import build_model, decode_step, kv_decode
from qkvlab.model.inference_linear import C, TORCH, Paths, use_fast_linears
from qkvlab.model.kernels import cpu_step
from qkvlab.model.kv_cache import KVCache

from tests.helpers import make_config

pytestmark = pytest.mark.skipif(not cpu_step.available(), reason="no C compiler with OpenMP: the step cannot be built")

VARIANTS = ["mha", "k_eq_v", "q_eq_k", "q_eq_k_eq_v", "k_eq_v_gqa", "mqa", "k_eq_v_mqa"]


def model_for(variant: str, dtype: torch.dtype, *overrides: str, context: int = 600):
    torch.manual_seed(0)
    cfg = make_config("data=mqar", f"variant={variant}", "model.d_ff=128", f"model.context={context}", *overrides)
    model = build_model(cfg, vocab_size=50).to(dtype).eval()
    # The C loop pinned for every Linear, as inference_model picks it where it measures fastest.
    assert use_fast_linears(model, Paths(C, TORCH)) > 0
    return model


def decode(model, idx, prefill: int, step: bool):
    """Logits of one-token decoding after a prefill, and the cache; `step=False` passes the per-forward
    dict the step never takes, so the same tokens go through the modules."""
    cache = KVCache(model, batch=idx.shape[0], max_len=idx.shape[1])
    with torch.no_grad():
        model(idx[:, :prefill], cache, 0)
        parts = [model(idx[:, t : t + 1], cache, t, None if step else {}) for t in range(prefill, idx.shape[1])]
    return torch.cat(parts, dim=1), cache


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_step_equals_the_modules_bit_for_bit(variant, dtype, batch):
    model = model_for(variant, dtype)
    # 520 cached positions: past 2 x 256, so the kernel cuts the cache into splits as the modules' call does.
    idx = torch.randint(0, 50, (batch, 524))
    with_step, cache = decode(model, idx, 520, step=True)
    assert decode_step.why_not(model, cache) is None
    assert isinstance(decode_step.step_for(model, cache), decode_step.DecodeStep)
    modules, cache_m = decode(model, idx, 520, step=False)
    assert torch.equal(with_step, modules)
    for a, b in zip(cache.layers, cache_m.layers):
        assert all(torch.equal(x, y) for x, y in zip(a.buffers, b.buffers))


def test_the_step_decodes_what_full_recomputation_gives():
    model = model_for("k_eq_v", torch.float32, context=64)
    idx = torch.randint(0, 50, (2, 40))
    with torch.no_grad():
        full = model(idx)
    stepped, _ = decode(model, idx, 30, step=True)
    torch.testing.assert_close(stepped, full[:, 30:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, reason",
    [
        (("model.norm=layernorm",), "the block is not the default one"),
        (("model.bias=true",), "the block is not the default one"),
        (("model.positions=learned",), "the block is not the default one"),
        (("variant=k_eq_v_qk_norm",), "normalises queries, keys or values"),
        (("variant=kv_shared",), "not plain shared-QKV attention"),
        (("variant=q_eq_k_plus",), "not plain shared-QKV attention"),
    ],
)
def test_models_it_does_not_cover_take_the_modules(overrides, reason):
    model = model_for("mha", torch.float32, *overrides, context=64)
    cache = KVCache(model, batch=1, max_len=8)
    assert reason in decode_step.why_not(model, cache)
    assert decode_step.step_for(model, cache) is None


def test_training_mode_grads_and_the_off_policy_take_the_modules(monkeypatch):
    model = model_for("k_eq_v", torch.float32, context=64)
    cache = KVCache(model, batch=1, max_len=8)
    assert decode_step.step_for(model, cache) is not None
    model.train()
    assert decode_step.step_for(model, cache) is None  # looked at again: the signature holds the mode
    model.eval()
    assert decode_step.step_for(model, cache) is not None
    monkeypatch.setenv("QKVLAB_DECODE_KERNEL", "off")
    assert "QKVLAB_DECODE_KERNEL=off" in decode_step.why_not(model, cache)
    assert decode_step.step_for(model, cache) is None
    monkeypatch.delenv("QKVLAB_DECODE_KERNEL")
    assert kv_decode.policy() == "auto"
    # With gradients on, a forward keeps the modules, whose outputs carry autograd's graph.
    with torch.enable_grad():
        y = model(torch.zeros(1, 1, dtype=torch.long), cache, 0)
    assert y.requires_grad


def test_plain_linears_take_the_modules():
    torch.manual_seed(0)
    model = build_model(make_config("data=mqar", "variant=k_eq_v", "model.d_ff=128", "model.context=64"), vocab_size=50).eval()
    assert "Linears do not take the C loop" in decode_step.why_not(model, KVCache(model, batch=1, max_len=8))


def test_a_weight_replaced_mid_generation_is_read_from_its_new_storage():
    idx = torch.randint(0, 50, (1, 12))
    outs = []
    for step in (True, False):
        model = model_for("k_eq_v", torch.float32, context=64)
        cache = KVCache(model, batch=1, max_len=12)
        with torch.no_grad():
            model(idx[:, :8], cache, 0)
            parts = []
            for t in range(8, 12):
                if t == 10:
                    old = model.blocks[1].mlp.down.weight
                    model.blocks[1].mlp.down.weight = torch.nn.Parameter(old.flip(0).clone())
                parts.append(model(idx[:, t : t + 1], cache, t, None if step else {}))
        assert decode_step.step_for(model, cache) is not None
        outs.append(torch.cat(parts, dim=1))
    assert torch.equal(*outs)


def test_writing_past_the_cache_fails_as_the_modules_do():
    model = model_for("k_eq_v", torch.float32, context=64)
    cache = KVCache(model, batch=1, max_len=4)
    with torch.no_grad(), pytest.raises(ValueError, match="KV cache holds 4 positions; asked to write up to 5"):
        model(torch.zeros(1, 1, dtype=torch.long), cache, 4)


def test_a_cache_of_another_dtype_takes_the_modules():
    model = model_for("k_eq_v", torch.float32, context=64)
    cache = KVCache(model, batch=1, max_len=8, dtype=torch.bfloat16)
    assert "not all fp32 or all bf16" in decode_step.why_not(model, cache)


def test_a_token_outside_the_vocabulary_fails_as_the_embedding_does():
    model = model_for("k_eq_v", torch.float32, context=64)
    cache = KVCache(model, batch=1, max_len=4)
    with torch.no_grad(), pytest.raises(IndexError, match="index out of range"):
        model(torch.full((1, 1), 50), cache, 0)


def test_a_model_cast_after_its_cache_was_made_takes_the_modules():
    model = model_for("k_eq_v", torch.float32, context=64)
    cache = KVCache(model, batch=1, max_len=8)
    assert decode_step.step_for(model, cache) is not None
    model.to(torch.bfloat16)  # parameters and rotary tables move; the fp32 cache stays
    assert decode_step.step_for(model, cache) is None
