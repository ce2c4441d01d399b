"""Inference Linears on a CPU in fp32 run through oneDNN and compute what F.linear computes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model import build_model
from qkvlab.model.kv_cache import KVCache
from qkvlab.model.onednn_linear import OneDnnLinear, available, use_onednn
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
    assert use_onednn(layer) == 1 and type(layer) is OneDnnLinear
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        # A strided input (a transposed view) is read as the values it shows.
        xt = torch.randn(shape[-1], *shape[:-1]).movedim(0, -1)
        torch.testing.assert_close(layer(xt), F.linear(xt, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_a_forward_that_needs_gradients_takes_f_linear():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    use_onednn(layer)
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
