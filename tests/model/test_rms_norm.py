"""The CPU-training RMSNorm computes F.rms_norm and its gradients, and keeps nn.RMSNorm's parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model import build_model
from qkvlab.model.rms_norm import RMSNorm, _RMSNormFn

from tests.helpers import make_config


@pytest.mark.parametrize("eps", [1e-5, None])
@pytest.mark.parametrize("shape", [(3, 5, 16), (7, 16)])
def test_forward_and_gradients_are_f_rms_norms(shape, eps):
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=eps)
    with torch.no_grad():
        norm.weight.mul_(1 + 0.3 * torch.randn(16))
    x0, g = 3 * torch.randn(*shape), torch.randn(*shape)
    grads = []
    for f in (norm, lambda x: F.rms_norm(x, (16,), norm.weight, eps)):
        norm.weight.grad = None
        x = x0.clone().requires_grad_()
        y = f(x)
        if f is norm:
            assert type(y.grad_fn).__name__ == "_RMSNormFnBackward"  # the hand-written path, not nn.RMSNorm's
        y.backward(g)
        grads.append((y.detach(), x.grad, norm.weight.grad.clone()))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 16), (2, 70, 16)])
def test_inference_takes_the_c_forward_and_computes_f_rms_norm(shape, dtype, monkeypatch):
    """Without gradients (eval, generate, decoding) a CPU norm, fp32 or in a model cast to bf16, is one
    C pass, on one thread for decoding's few rows; its values are F.rms_norm's (bf16: computed in fp32,
    rounded once, so at most one bf16 step apart)."""
    from qkvlab.model.kernels import cpu_train

    if not cpu_train.available():
        pytest.skip("no C compiler with OpenMP")
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.mul_(1 + 0.3 * torch.randn(16))
    norm.to(dtype)
    x = (3 * torch.randn(*shape)).to(dtype)
    calls = []
    real = cpu_train.rms_norm_forward
    monkeypatch.setattr(cpu_train, "rms_norm_forward", lambda *a, **k: calls.append(k) or real(*a, **k))
    with torch.no_grad():
        y = norm(x)
    assert calls == [{"save": False}] and y.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(y, F.rms_norm(x, (16,), norm.weight, 1e-5), **tol)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        norm(x)
    assert len(calls) == 1 or dtype == torch.float32  # autocast keeps PyTorch's rules for bf16 rows


def test_the_hand_written_backward_passes_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 8, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.3 * torch.randn(8, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: _RMSNormFn.apply(x, w, 1e-5), (x, w))


def test_the_default_block_uses_it_and_its_checkpoints_are_nn_rmsnorms():
    """Same parameter names and values as nn.RMSNorm: checkpoints from before load unchanged."""
    model = build_model(make_config("data=mqar", "model.norm=rmsnorm"), 50)
    norms = [m for m in model.modules() if isinstance(m, nn.RMSNorm)]
    assert norms and all(type(m) is RMSNorm for m in norms if m.normalized_shape == (model.cfg.d_model,))
    plain = nn.RMSNorm(model.cfg.d_model, eps=model.cfg.norm_eps)
    assert norms[0].state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(norms[0].state_dict())
