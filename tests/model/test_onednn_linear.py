"""Inference Linears on a CPU in fp32 run through oneDNN and compute what F.linear computes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model import build_model
from qkvlab.model.kv_cache import KVCache
from qkvlab.model import onednn_linear
from qkvlab.model.onednn_linear import OneDnnLinear, available, onednn_is_faster, use_onednn
from qkvlab.train.device import inference_model

from tests.helpers import make_config

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN Linear (torch.ops.mkldnn._linear_pointwise)")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 96), (3, 7, 96), (5, 96)])
def test_onednn_linear_computes_f_linear(shape, bias):
    torch.manual_seed(0)
    layer = nn.Linear(96, 40, bias=bias)
    x = torch.randn(*shape)
    expected = F.linear(x, layer.weight, layer.bias)
    assert use_onednn(layer, measured=False) == 1 and type(layer) is OneDnnLinear
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        # A strided input (a transposed view) is read as the values it shows.
        xt = torch.randn(shape[-1], *shape[:-1]).movedim(0, -1)
        torch.testing.assert_close(layer(xt), F.linear(xt, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_a_forward_that_needs_gradients_takes_f_linear():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    use_onednn(layer, measured=False)
    layer(torch.randn(2, 16)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["mha", "k_eq_v"])
def test_inference_model_switches_every_plain_linear_and_keeps_the_logits(variant, monkeypatch):
    """eval, generate and bench run the switched model: full and cached logits stay F.linear's, the tied
    head keeps the embedding's very tensor, and QKVLAB_DECODE_KERNEL=off leaves plain PyTorch."""
    torch.manual_seed(0)
    cfg = make_config("data=mqar", f"variant={variant}", "model.d_ff=128", "model.context=64", "model.tie_embeddings=true")
    model = build_model(cfg, 50).eval()
    idx = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        reference = model(idx)
    monkeypatch.setattr(onednn_linear, "onednn_is_faster", lambda threads: True)
    monkeypatch.setenv("QKVLAB_DECODE_KERNEL", "off")
    plain = inference_model(copy.deepcopy(model), "fp32")
    assert not any(isinstance(m, OneDnnLinear) for m in plain.modules())
    monkeypatch.delenv("QKVLAB_DECODE_KERNEL")
    fast = inference_model(copy.deepcopy(model), "fp32")
    linears = [m for m in fast.modules() if isinstance(m, nn.Linear)]
    assert sum(type(m) is OneDnnLinear for m in linears) == sum(type(m) is nn.Linear for m in model.modules()) > 0
    assert fast.head.weight is fast.tok_emb.weight
    cache = KVCache(fast, batch=2, max_len=24)
    with torch.no_grad():
        full = fast(idx)
        decoded = torch.cat([fast(idx[:, :6], cache, 0)] + [fast(idx[:, t : t + 1], cache, t) for t in range(6, 24)], 1)
    torch.testing.assert_close(full, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(decoded, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("onednn_s, torch_s, chosen", [(1.0, 2.0, True), (1.0, 1.02, False), (2.0, 1.0, False)])
def test_onednn_is_used_only_where_it_measures_faster(onednn_s, torch_s, chosen, monkeypatch):
    """MKL beats oneDNN on Intel Xeons and loses on AMD EPYCs (one-row products 0.74x and 1.46x), so the
    path is measured on the machine: oneDNN only where it wins by 5%, else models keep F.linear."""
    monkeypatch.setattr(onednn_linear, "_probe_seconds", lambda path, weights, x: onednn_s if path == "onednn" else torch_s)
    onednn_is_faster.cache_clear()
    try:
        assert onednn_is_faster(1) is chosen
        assert onednn_linear.linear_path() == ("onednn" if chosen else "torch")
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
        assert use_onednn(model) == (2 if chosen else 0)
        assert all(type(m) is (OneDnnLinear if chosen else nn.Linear) for m in model)
    finally:
        onednn_is_faster.cache_clear()


def test_a_model_with_nothing_to_switch_is_not_probed(monkeypatch):
    """The probe costs 50-80 ms: a bf16 model (or a GPU one) has no fp32 CPU Linear, so it never runs."""
    monkeypatch.setattr(onednn_linear, "onednn_is_faster", lambda threads: pytest.fail("probed a bf16 model"))
    assert use_onednn(nn.Sequential(nn.Linear(8, 8)).bfloat16()) == 0
