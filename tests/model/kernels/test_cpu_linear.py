"""The C loop for decoding's few-row Linears: F.linear's products to fp32 rounding, bf16 weights
widened exactly, bf16 outputs rounded to nearest even once, and PyTorch kept where it cannot run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkvlab.model.kernels import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="the C Linear could not be built (no C compiler with OpenMP)")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("N, K", [(4, 16), (7, 48), (1152, 384), (42, 1024)])
def test_fp32_products_match_float64(N, K, rows, threads):
    gen = torch.Generator().manual_seed(N * K + rows)
    x, w, b = torch.randn(rows, K, generator=gen), torch.randn(N, K, generator=gen), torch.randn(N, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = cpu_linear.few_rows_linear(x, w, b)
    finally:
        torch.set_num_threads(before)
    exact = F.linear(x.double(), w.double(), b.double())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-5 * K**0.5)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_bf16_weights_are_widened_exactly(x_dtype):
    """The even/odd widening must pair each weight with its own feature: weights and inputs with few
    significant bits give sums that are exact in fp32, so any mispairing shows as a wrong value."""
    gen = torch.Generator().manual_seed(0)
    N, K = 13, 64
    w = torch.randint(-8, 9, (N, K), generator=gen).float().bfloat16()
    x = torch.randint(-8, 9, (2, K), generator=gen).float().to(x_dtype)
    b = torch.arange(N, dtype=torch.float32).bfloat16()
    y = cpu_linear.few_rows_linear(x, w, b)
    exact = x.double() @ w.double().T + b.double()
    assert y.dtype == x_dtype
    assert torch.equal(y, exact.float().to(x_dtype))  # exact in fp32, then rounded once for a bf16 output


def test_bf16_outputs_round_to_nearest_even():
    """Sums of bf16 terms that land exactly between two bf16 values, or just past one: the fp32 sum is
    rounded once, as torch's .to(torch.bfloat16) rounds it (ties to even), and NaN stays NaN."""
    K = 16
    w = torch.zeros(1, K, dtype=torch.bfloat16)
    w[0, :3] = 1.0
    sums = [
        (1.0, 2.0**-8, 0.0),  # halfway between 1 and 1 + 2^-7: to 1
        (1.0, 3 * 2.0**-8, 0.0),  # halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6
        (1.0, 2.0**-8, 2.0**-16),  # just past halfway: up
        (-1.0, -(2.0**-8), -(2.0**-16)),
        (float("nan"), 0.0, 0.0),
    ]
    for terms in sums:
        x = torch.zeros(1, K, dtype=torch.bfloat16)
        x[0, :3] = torch.tensor(terms)
        torch.testing.assert_close(x[0, :3].float(), torch.tensor(terms), rtol=0, atol=0, equal_nan=True)  # each term is a bf16 value
        y = cpu_linear.few_rows_linear(x, w, None)
        expected = torch.tensor([sum(terms)], dtype=torch.float32).bfloat16()
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y[0], expected, rtol=0, atol=0, equal_nan=True)


def test_applies_only_where_the_loop_runs():
    w = torch.randn(8, 32)
    assert cpu_linear.applies(torch.randn(1, 32), w, None)
    assert cpu_linear.applies(torch.randn(2, 4, 32), w, torch.randn(8))
    assert not cpu_linear.applies(torch.randn(9, 32), w, None)  # past MAX_ROWS: a GEMM's job
    assert not cpu_linear.applies(torch.randn(1, 24), torch.randn(8, 24), None)  # not a multiple of 16
    assert not cpu_linear.applies(torch.randn(1, 32), w.T.contiguous().T, None)  # columns, not rows, contiguous
    assert not cpu_linear.applies(torch.randn(1, 32).double(), w.double(), None)
    assert not cpu_linear.applies(torch.randn(1, 32), w, torch.randn(8).bfloat16())


def test_without_a_compiler_nothing_applies(monkeypatch):
    monkeypatch.setattr(cpu_linear, "library", lambda: None)
    assert not cpu_linear.applies(torch.randn(1, 32), torch.randn(8, 32), None)
