"""The fused-gradient SwiGLU computes silu(gate)·up and autograd's gradients, and the MLP uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkvlab.model import build_model
from qkvlab.model.kernels import cpu_train
from qkvlab.model.swiglu import _SwiGLU, swiglu

from tests.helpers import make_config


def reference(h: torch.Tensor) -> torch.Tensor:
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradients_are_autograds(dtype):
    torch.manual_seed(0)
    h0, g = (3 * torch.randn(3, 5, 16)).to(dtype), torch.randn(3, 5, 8).to(dtype)
    results = []
    for f in (swiglu, reference):
        h = h0.clone().requires_grad_()
        y = f(h)
        if f is swiglu:
            assert type(y.grad_fn).__name__ == "_SwiGLUBackward"
        y.backward(g)
        results.append((y.detach(), h.grad))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref)


def test_the_hand_written_backward_passes_gradcheck():
    torch.manual_seed(0)
    h = torch.randn(4, 6, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SwiGLU.apply, (h,))


def test_without_gradients_it_is_the_formula_in_one_c_pass():
    h = torch.randn(2, 3, 8)
    y = swiglu(h)
    assert y.grad_fn is None
    torch.testing.assert_close(y, reference(h), rtol=2e-6, atol=1e-7)
    if cpu_train.available():  # the function the whole-token decode step calls too
        assert torch.equal(y, cpu_train.swiglu(h))


def test_the_swiglu_mlp_trains_through_it():
    torch.manual_seed(0)
    model = build_model(make_config("data=mqar", "model.mlp=swiglu"), 50)
    seen = []
    handle = model.blocks[0].mlp.down.register_forward_hook(lambda m, args, out: seen.append(type(args[0].grad_fn).__name__))
    model(torch.randint(0, 50, (2, 16))).float().sum().backward()
    handle.remove()
    assert seen == ["_SwiGLUBackward"]
    assert model.blocks[0].mlp.up.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("rows", [1, 8, 200])
def test_with_and_without_gradients_it_gives_the_same_values(rows):
    h = torch.randn(rows, 64)
    with torch.no_grad():
        plain = swiglu(h)
    assert torch.equal(swiglu(h.clone().requires_grad_()).detach(), plain)
