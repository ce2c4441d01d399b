"""The C training ops compute what the PyTorch forms they replace compute, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkvlab.model.attention import _rotate, rotate
from qkvlab.model.kernels import cpu_train
from qkvlab.model.rms_norm import RMSNorm

pytestmark = pytest.mark.skipif(not cpu_train.available(), reason="no C compiler with OpenMP: the kernels cannot be built")


def tables(T: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    ang = torch.rand(T, D // 2, dtype=torch.float64) * 6
    ang = torch.cat((ang, ang), -1)
    return ang.cos(), ang.sin()


@pytest.mark.parametrize("D", [16, 48, 64, 20])  # 20: a head size without its own unrolled copy
@pytest.mark.parametrize("layout", ["contiguous", "projection view"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rope_equals_rotate_half_in_float64(D, layout, sign):
    torch.manual_seed(0)
    B, H, T = 2, 3, 7
    if layout == "contiguous":
        x = torch.randn(B, H, T, D)
    else:  # q of a fused (B, T, 3·H·D) projection, as attention hands it over
        x = torch.randn(B, T, 3 * H * D)[..., H * D : 2 * H * D].view(B, T, H, D).transpose(1, 2)
    cos, sin = tables(T, D)
    assert cpu_train.rope_applies(x, cos.float(), sin.float())
    got = cpu_train.rope(x, cos.float(), sin.float(), sign)
    want = _rotate(x.double(), cos, sin, sign)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_rope_through_autograd_matches_the_pytorch_form():
    torch.manual_seed(0)
    x0, g = torch.randn(2, 4, 9, 32), torch.randn(2, 4, 9, 32)
    cos, sin = (t.float() for t in tables(9, 32))
    x = x0.clone().requires_grad_()
    rotate(x, cos, sin).backward(g)
    x64 = x0.double().requires_grad_()
    _rotate(x64, cos.double(), sin.double()).backward(g.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("D", [48, 64, 20])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bf16_rope_is_the_float64_rotation_rounded_once(D, sign):
    """A model cast to bf16 decodes with bf16 queries, keys and tables: the C form widens them, rotates
    in fp32 and rounds once, so it is the exact rotation of its inputs within one bf16 rounding, where
    PyTorch's bf16 form rounds twice."""
    torch.manual_seed(0)
    B, H, T = 2, 3, 7
    x = torch.randn(B, T, 3 * H * D)[..., H * D : 2 * H * D].view(B, T, H, D).transpose(1, 2).bfloat16()
    cos, sin = (t.bfloat16() for t in tables(T, D))
    assert cpu_train.rope_applies(x, cos, sin)
    got = rotate(x, cos, sin) if sign > 0 else cpu_train.rope(x, cos, sin, sign)
    assert got.dtype == torch.bfloat16
    want = _rotate(x.double(), cos.double(), sin.double(), sign)
    torch.testing.assert_close(got.double(), want, rtol=2**-8, atol=1e-6)
    assert (got.double() - want).abs().max() < (_rotate(x, cos, sin, sign).double() - want).abs().max()


def test_rope_leaves_other_dtypes_and_shapes_to_pytorch():
    cos, sin = (t.float() for t in tables(5, 8))
    assert not cpu_train.rope_applies(torch.randn(1, 2, 5, 8).bfloat16(), cos, sin)
    wide, wide_tables = torch.randn(1, 2, 5, 512).bfloat16(), [t.bfloat16() for t in tables(5, 512)]
    assert not cpu_train.rope_applies(wide, *wide_tables)
    with pytest.raises(ValueError, match="at most 256 features"):  # the C row buffers hold 256: refused, not overrun
        cpu_train.rope(wide, *wide_tables)
    assert not cpu_train.rope_applies(torch.randn(2, 5, 8), cos, sin)
    assert not cpu_train.rope_applies(torch.randn(1, 2, 5, 16)[..., ::2], cos, sin)


@pytest.mark.parametrize("shape", [(3, 5, 24), (7, 384)])
def test_rms_norm_forward_and_backward_equal_float64_autograd(shape):
    torch.manual_seed(0)
    D = shape[-1]
    norm = RMSNorm(D, eps=1e-5)
    with torch.no_grad():
        norm.weight.mul_(1 + 0.3 * torch.randn(D))
    x0, g = 3 * torch.randn(*shape), torch.randn(*shape)
    x = x0.clone().requires_grad_()
    y = norm(x)
    assert type(y.grad_fn).__name__ == "_RMSNormFnBackward"
    y.backward(g)
    x64, w64 = x0.double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    y64 = F.rms_norm(x64, (D,), w64, 1e-5)
    y64.backward(g.double())
    torch.testing.assert_close(y.detach().double(), y64.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-4)


def test_rms_norm_weight_gradient_is_the_same_on_every_run():
    """Per-thread partial sums over fixed row ranges: no run-to-run drift in dw at a given thread count."""
    torch.manual_seed(0)
    x, g, w = torch.randn(64, 48), torch.randn(64, 48), torch.rand(48) + 0.5
    _, inv = cpu_train.rms_norm_forward(x, w, 1e-5)
    first = cpu_train.rms_norm_backward(g, x, w, inv)
    for _ in range(3):
        again = cpu_train.rms_norm_backward(g, x, w, inv)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("shape", [(1, 1, 2 * 1024), (3, 70, 2 * 37), (2, 6)])
def test_swiglu_is_float64s_within_fp32_rounding_and_bf16s_rounded_once(shape):
    torch.manual_seed(0)
    # Gates from -40 to 40: both sides of the sigmoid, and where e^-|g| is tiny.
    h = torch.randn(*shape, dtype=torch.float64) * 10
    h.view(-1)[:2] = torch.tensor([-40.0, 40.0])
    gate, up = h.chunk(2, dim=-1)
    ref = F.silu(gate) * up
    y = cpu_train.swiglu(h.float())
    torch.testing.assert_close(y.double(), F.silu(gate.float().double()) * up.float().double(), rtol=2e-6, atol=1e-30)
    hb = h.to(torch.bfloat16)
    gb, ub = hb.double().chunk(2, dim=-1)
    yb = cpu_train.swiglu(hb)
    exact = (F.silu(gb) * ub).to(torch.bfloat16)
    # One rounding of the fp32 result: the float64 value rounded, but where fp32 lands on a tie (one step off).
    assert (yb != exact).float().mean() < 1e-3
    assert ((yb.double() - exact.double()).abs() <= exact.double().abs() * 2**-7).all()  # at most one bf16 step
    assert ref.shape == y.shape
