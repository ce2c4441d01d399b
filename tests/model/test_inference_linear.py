"""Inference Linears on a CPU take the fastest path measured here (PyTorch, oneDNN, or the C loop for
decoding's few rows) and compute what F.linear computes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model import build_model, inference_linear
from qkvlab.model.inference_linear import C, ONEDNN, TORCH, InferenceLinear, Paths, fastest_paths, use_fast_linears
from qkvlab.model.kernels import cpu_linear
from qkvlab.model.kv_cache import KVCache
from qkvlab.train.device import inference_model

from tests.helpers import make_config

needs_onednn = pytest.mark.skipif(not inference_linear.onednn_available(), reason="this torch build has no oneDNN Linear (torch.ops.mkldnn._linear_pointwise)")
needs_c = pytest.mark.skipif(not cpu_linear.available(), reason="the C Linear could not be built (no C compiler with OpenMP)")


def _switched(layer: nn.Linear, paths: Paths) -> nn.Linear:
    assert use_fast_linears(layer, paths) == 1 and type(layer) is InferenceLinear
    return layer


@pytest.mark.parametrize("paths", [pytest.param(Paths(ONEDNN, ONEDNN), marks=needs_onednn), pytest.param(Paths(C, TORCH), marks=needs_c)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 96), (3, 2, 96), (5, 96), (3, 7, 96)])
def test_switched_linears_compute_f_linear(shape, bias, paths):
    """One row (decoding), a few rows (batched decoding: the C loop), many (prefill: past MAX_ROWS);
    40 outputs is not a multiple of the C loop's four-row groups."""
    torch.manual_seed(0)
    layer = nn.Linear(96, 42, bias=bias)
    x = torch.randn(*shape)
    expected = F.linear(x, layer.weight, layer.bias)
    _switched(layer, paths)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        # A strided input (a transposed view) is read as the values it shows.
        xt = torch.randn(shape[-1], *shape[:-1]).movedim(0, -1)
        torch.testing.assert_close(layer(xt), F.linear(xt, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@needs_c
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_linears_round_fp32_sums_once(bias):
    """A bf16 model's products: sums kept in fp32 and rounded to bf16 once, as PyTorch's bf16 Linear
    does; so each output is the float64 product rounded to bf16, give or take one bf16 step."""
    torch.manual_seed(0)
    layer = nn.Linear(384, 1030, bias=bias).bfloat16()
    x = torch.randn(2, 1, 384).bfloat16()
    exact = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    _switched(layer, Paths(C, TORCH))
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 1, 1030)
    step = exact.abs().clamp_min(1e-3) * 2.0**-7
    assert ((y.double() - exact).abs() <= step).all()
    torch.testing.assert_close(y, F.linear(x, layer.weight.detach(), layer.bias), rtol=1.6e-2, atol=1e-2)


@needs_c
def test_inputs_the_c_loop_does_not_take_go_to_the_prefill_path():
    """An input size that is not a multiple of 16 falls back, and still computes F.linear."""
    torch.manual_seed(0)
    layer = nn.Linear(40, 8)
    x = torch.randn(1, 40)
    expected = F.linear(x, layer.weight, layer.bias)
    assert not cpu_linear.applies(x, layer.weight, layer.bias)
    _switched(layer, Paths(C, TORCH))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@needs_c
def test_weights_replaced_after_a_call_are_checked_again():
    """The C loop's check of the weights is kept per weight: a weight replaced by one it does not take
    (rows not contiguous) or cast (bf16) is checked again, and every call still computes F.linear."""
    torch.manual_seed(0)
    layer = _switched(nn.Linear(32, 8), Paths(C, TORCH))
    x = torch.randn(1, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        layer.weight = nn.Parameter(torch.randn(32, 8).t())  # a transposed view: rows not contiguous
        assert not cpu_linear.weight_applies(layer.weight, layer.bias)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        layer.weight = nn.Parameter(torch.randn(8, 32))
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        layer.to(torch.bfloat16)
        xb = x.bfloat16()
        torch.testing.assert_close(layer(xb).float(), F.linear(xb.float(), layer.weight.float(), layer.bias.float()), rtol=8e-3, atol=8e-3)


@pytest.mark.parametrize("paths", [pytest.param(Paths(ONEDNN, ONEDNN), marks=needs_onednn), pytest.param(Paths(C, TORCH), marks=needs_c)])
def test_a_forward_that_needs_gradients_takes_f_linear(paths):
    torch.manual_seed(0)
    layer = _switched(nn.Linear(16, 8), paths)
    layer(torch.randn(1, 16)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@needs_c
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["mha", "k_eq_v"])
def test_inference_model_switches_every_plain_linear_and_keeps_the_logits(variant, precision, monkeypatch):
    """eval, generate and bench run the switched model: full and cached logits stay F.linear's, the tied
    head keeps the embedding's very tensor, and QKVLAB_DECODE_KERNEL=off leaves plain PyTorch."""
    torch.manual_seed(0)
    cfg = make_config("data=mqar", f"variant={variant}", "model.d_ff=128", "model.context=64", "model.tie_embeddings=true")
    model = build_model(cfg, 50).eval()
    idx = torch.randint(0, 50, (2, 24))
    monkeypatch.setattr(inference_linear, "fastest_paths", lambda threads, dtype=torch.float32: Paths(C, TORCH))
    monkeypatch.setenv("QKVLAB_DECODE_KERNEL", "off")
    plain = inference_model(copy.deepcopy(model), precision)
    assert not any(isinstance(m, InferenceLinear) for m in plain.modules())
    with torch.no_grad():
        reference = plain(idx)
    monkeypatch.delenv("QKVLAB_DECODE_KERNEL")
    fast = inference_model(copy.deepcopy(model), precision)
    linears = [m for m in fast.modules() if isinstance(m, nn.Linear)]
    assert sum(type(m) is InferenceLinear for m in linears) == sum(type(m) is nn.Linear for m in model.modules()) > 0
    assert fast.head.weight is fast.tok_emb.weight
    cache = KVCache(fast, batch=2, max_len=24, dtype=reference.dtype)
    with torch.no_grad():
        full = fast(idx)
        decoded = torch.cat([fast(idx[:, :6], cache, 0)] + [fast(idx[:, t : t + 1], cache, t) for t in range(6, 24)], 1)
    tol = dict(rtol=1e-4, atol=1e-5) if precision == "fp32" else dict(rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(full, reference, **tol)
    torch.testing.assert_close(decoded, reference, **tol)


@pytest.mark.parametrize(
    "seconds, chosen",
    [
        ({TORCH: 2.0, ONEDNN: 1.0, C: 1.5}, Paths(ONEDNN, ONEDNN)),
        ({TORCH: 2.0, ONEDNN: 1.5, C: 1.0}, Paths(C, ONEDNN)),
        ({TORCH: 1.0, ONEDNN: 1.5, C: 0.5}, Paths(C, TORCH)),
        ({TORCH: 1.0, ONEDNN: 1.02, C: 0.99}, Paths(TORCH, TORCH)),
        ({TORCH: 1.0, ONEDNN: 2.0, C: 2.0}, Paths(TORCH, TORCH)),
    ],
)
def test_paths_are_taken_only_where_they_measure_faster(seconds, chosen, monkeypatch):
    """MKL beats oneDNN on Intel Xeons and loses on AMD EPYCs (one-row products 0.74x and 1.46x), so
    paths are measured on the machine: another path only where it wins by 5%, the fastest one-row path
    for decoding, oneDNN for prefill where it beat MKL."""
    monkeypatch.setattr(inference_linear, "candidates", lambda dtype: [TORCH, ONEDNN, C])
    monkeypatch.setattr(inference_linear, "_probe_seconds", lambda path, weights, x: seconds[path])
    fastest_paths.cache_clear()
    try:
        assert fastest_paths(1) == chosen
        assert inference_linear.linear_paths() == chosen
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
        assert use_fast_linears(model) == (0 if chosen == (TORCH, TORCH) else 2)
        assert all(type(m) is (nn.Linear if chosen == (TORCH, TORCH) else InferenceLinear) for m in model)
    finally:
        fastest_paths.cache_clear()


def test_a_model_with_nothing_to_switch_is_not_probed(monkeypatch):
    """The probe costs 50-80 ms: a model whose Linears no other path takes (fp64 here) never runs it."""
    monkeypatch.setattr(inference_linear, "fastest_paths", lambda threads, dtype=torch.float32: pytest.fail("probed an fp64 model"))
    assert use_fast_linears(nn.Sequential(nn.Linear(8, 8)).double()) == 0
