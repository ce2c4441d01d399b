"""The CPU decode kernel equals the PyTorch computation it replaces: RoPE(key_map(S)) as keys, S as values,
or, for `mha` and GQA, the cached K as keys and a separate V as values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkvlab.model.attention import rotate
from qkvlab.model.kernels import cpu_decode

pytestmark = pytest.mark.skipif(not cpu_decode.available(), reason="no C compiler with OpenMP: the kernel cannot be built")


def reference(q, s, cos, sin, scale, gain, eps):
    """Plain PyTorch in float64: key map, rotate-half RoPE, then SDPA with GQA."""
    s64 = s.double()
    k = s64
    if eps is not None:
        k = F.rms_norm(k, (k.shape[-1],), eps=eps)
    if gain is not None:
        k = k * gain.double()
    if cos is not None:
        k = rotate(k, torch.cat((cos, cos), -1).double(), torch.cat((sin, sin), -1).double())
    h, kv = q.shape[1], s.shape[1]
    return F.scaled_dot_product_attention(q.double()[:, :, None], k, s64, scale=scale, enable_gqa=h != kv)[:, :, 0]


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("rope,keymap", [(True, None), (False, None), (True, "gain"), (True, "norm")])
@pytest.mark.parametrize("d_head,length", [(48, 70), (48, 129), (64, 600), (32, 1300)])  # 129: an odd last block; 1300: several 512-row chunks
def test_fp32_kernel_equals_pytorch(heads, kv_heads, rope, keymap, d_head, length):
    torch.manual_seed(0)
    B = 2
    buf = torch.randn(B, kv_heads, length + 5, d_head)
    s = buf[:, :, :length]  # the cache's valid part: a view with the buffer's strides
    q = torch.randn(B, heads, d_head)
    angles = torch.rand(length, d_head // 2) * 6.0
    cos, sin = (angles.cos(), angles.sin()) if rope else (None, None)
    gain = torch.rand(d_head) + 0.5 if keymap else None
    eps = 1e-5 if keymap == "norm" else None
    got = cpu_decode.decode_shared_kv(q, s, cos, sin, scale=0.3, key_gain=gain, key_norm_eps=eps)
    want = reference(q, s, cos, sin, 0.3, gain, eps)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_bf16_cache_is_read_as_bf16():
    torch.manual_seed(0)
    s = torch.randn(1, 2, 300, 32).bfloat16()
    q = torch.randn(1, 4, 32)
    angles = torch.rand(300, 16)
    got = cpu_decode.decode_shared_kv(q, s, angles.cos(), angles.sin(), scale=0.2)
    want = reference(q, s, angles.cos(), angles.sin(), 0.2, None, None)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_bf16_tables_are_read_as_they_are():
    """A model cast to bf16 keeps bf16 rotary tables: the kernel reads them without a converted copy
    and gives what fp32 copies of the same values give."""
    torch.manual_seed(0)
    s = torch.randn(1, 2, 300, 48).bfloat16()
    q = torch.randn(1, 4, 48)
    angles = torch.rand(300, 48) * 6
    cos, sin = angles.cos().bfloat16()[:, :24], angles.sin().bfloat16()[:, :24]  # views of (L, D) tables
    got = cpu_decode.decode_shared_kv(q, s, cos, sin, scale=0.2)
    assert torch.equal(got, cpu_decode.decode_shared_kv(q, s, cos.float(), sin.float(), scale=0.2))
    torch.testing.assert_close(got.double(), reference(q, s, cos.float(), sin.float(), 0.2, None, None), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 1)])
@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("tables", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d_head,length", [(48, 129), (64, 700), (32, 70), (96, 300)])  # 96: the generic head size
def test_bf16_queries_and_cache_give_the_reference_within_one_bf16_rounding(heads, kv_heads, rope, tables, d_head, length):
    """A model cast to bf16 decodes with bf16 queries, which the kernel may pack to bf16 exactly: on a CPU
    with AVX512-BF16 it then scores with bf16 dot products, RoPE applied to the products, and widens the
    values in fp32. The bf16 result is the float64 reference's within one bf16 rounding."""
    torch.manual_seed(0)
    s = torch.randn(2, kv_heads, length + 3, d_head).bfloat16()[:, :, :length]
    q = torch.randn(2, heads, d_head).bfloat16()
    angles = torch.rand(length, d_head // 2) * 6.0
    cos, sin = (angles.cos().to(tables), angles.sin().to(tables)) if rope else (None, None)
    got = cpu_decode.decode_shared_kv(q, s, cos, sin, scale=0.3)
    assert got.dtype == torch.bfloat16
    want = reference(q.float(), s, None if cos is None else cos.float(), None if sin is None else sin.float(), 0.3, None, None)
    torch.testing.assert_close(got.double(), want, rtol=4e-3, atol=1e-5)


def test_long_cache_with_large_scores_is_stable():
    """Scores spread far apart (the online softmax's rescaling) and a cache split across work units."""
    torch.manual_seed(0)
    s = torch.randn(1, 1, 2000, 16) * 6
    q = torch.randn(1, 1, 16) * 6
    got = cpu_decode.decode_shared_kv(q, s, None, None, scale=1.0)
    torch.testing.assert_close(got.double(), reference(q, s, None, None, 1.0, None, None), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 1)])
@pytest.mark.parametrize("dtype,q_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("d_head,length", [(48, 129), (64, 700), (96, 70)])
def test_separate_values_give_sdpa_over_k_and_v(heads, kv_heads, dtype, q_dtype, d_head, length):
    """`mha`'s two cached tensors: keys as cached (already rotated), values read from V, not from K; with bf16
    queries (the bf16 dot-product path, where the CPU has one) within one bf16 rounding of the result."""
    torch.manual_seed(0)
    k = torch.randn(2, kv_heads, length + 3, d_head).to(dtype)[:, :, :length]
    v = torch.randn(2, kv_heads, length + 3, d_head).to(dtype)[:, :, :length]
    q = torch.randn(2, heads, d_head).to(q_dtype)
    got = cpu_decode.decode_shared_kv(q, k, None, None, scale=0.25, values=v)
    want = F.scaled_dot_product_attention(q.double()[:, :, None], k.double(), v.double(), scale=0.25, enable_gqa=heads != kv_heads)[:, :, 0]
    tol = 4e-3 if q_dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=1e-5)


def test_separate_values_refuse_a_key_map_or_another_shape():
    k = torch.randn(1, 2, 40, 32)
    with pytest.raises(ValueError, match="values must match s"):
        cpu_decode.decode_shared_kv(torch.randn(1, 2, 32), k, None, None, scale=1.0, values=torch.randn(1, 2, 41, 32))
    with pytest.raises(ValueError, match="without RoPE or a key map"):
        cpu_decode.decode_shared_kv(torch.randn(1, 2, 32), k, None, None, scale=1.0, key_gain=torch.ones(32), values=k)
