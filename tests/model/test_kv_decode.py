"""Decoding through the fused kernel gives the PyTorch path's logits: one-tensor caches, and on CPUs `mha`'s
and GQA's K and V too."""

from __future__ import annotations

import pytest
import torch

from qkvlab.errors import ConfigError
from qkvlab.model import build_model, kv_decode
from qkvlab.model.kernels import cpu_decode
from qkvlab.model.kv_cache import KVCache

from tests.helpers import make_config

ONE_TENSOR = ["k_eq_v", "q_eq_k_eq_v", "k_eq_v_gqa", "k_eq_v_mqa", "k_eq_v_qk_norm", "gemma4_k_eq_v", "keyless", "qvv3"]
TWO_TENSOR = ["mha", "q_eq_k", "gqa", "mqa"]


def decode_logits(model, idx, dtype):
    cache = KVCache(model, batch=idx.shape[0], max_len=idx.shape[1], dtype=dtype)
    with torch.no_grad():
        parts = [model(idx[:, :5], cache, 0)] + [model(idx[:, t : t + 1], cache, t) for t in range(5, idx.shape[1])]
    return torch.cat(parts, dim=1).float()


@pytest.mark.skipif(not cpu_decode.available(), reason="no C compiler with OpenMP: the kernel cannot be built")
@pytest.mark.parametrize("variant", ONE_TENSOR + TWO_TENSOR)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_decoding_equals_the_pytorch_path(variant, dtype, monkeypatch):
    torch.manual_seed(0)
    cfg = make_config("data=mqar", f"variant={variant}", "model.d_ff=128", "model.context=64")
    model = build_model(cfg, vocab_size=50).eval().to(dtype)
    assert kv_decode.kernel_for(torch.device("cpu"), dtype, model.spec.n_heads, model.spec.n_kv_heads, model.spec.d_head) == "cpu"
    idx = torch.randint(0, 50, (2, 20))
    assert model.blocks[0].attn.fused_decode(KVCache(model, batch=2, max_len=20, dtype=dtype)[0])
    fused = decode_logits(model, idx, dtype)
    monkeypatch.setenv("QKVLAB_DECODE_KERNEL", "off")
    plain = decode_logits(model, idx, dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=0.05)
    torch.testing.assert_close(fused, plain, **tol)


def test_a_bad_kernel_policy_fails_at_start_up_in_one_line(monkeypatch):
    from qkvlab.checks import compose_config

    monkeypatch.setenv("QKVLAB_DECODE_KERNEL", "fast")
    with pytest.raises(ConfigError, match="QKVLAB_DECODE_KERNEL='fast' is not valid; choose one of: auto, off"):
        compose_config(["variant=k_eq_v"])
