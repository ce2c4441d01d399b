"""The Triton decode kernel for one-tensor caches against attention.py's own RoPE and SDPA (in
Triton's CPU interpreter without a GPU, on the GPU with one), and a count of its loads in the
interpreter showing it reads the cache once."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# Without a GPU the kernel runs in Triton's interpreter. Triton decides at decoration time, its own
# library functions included, whether a kernel is interpreted: this must precede the session's first
# `import triton`. Test modules are imported at collection, before any test runs (torch.compile
# imports triton too; on CPU it works the same with this set). With a GPU the tests run the kernel on it.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from qkvlab.model.attention import rotate, rotate_pairs, to_pairs  # noqa: E402
from qkvlab.model.kernels import triton_decode as td  # noqa: E402


def interpreted() -> bool:
    import triton.language as tl

    return DEVICE == "cuda" or type(tl.zeros).__name__ == "InterpretedFunction"


pytestmark = [
    pytest.mark.skipif(not td.available(), reason="triton is not installed (pip install 'qkvlab[triton]'); the kernel runs here only in its interpreter"),
    pytest.mark.skipif(
        td.available() and not interpreted(),
        reason="triton was imported before TRITON_INTERPRET=1 was set, so its kernels would need a GPU",
    ),
]


def tables(L: int, D: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
    angle = torch.outer(torch.arange(L, dtype=torch.float32), inv)
    return angle.cos(), angle.sin()


def reference(q, s, cos, sin, scale, pairs, gain, eps):
    """The decode path as attention.py computes it, in fp32: keys from S (norm, gain), rotated by
    `rotate` or `rotate_pairs`, then SDPA with GQA over keys and S."""
    qf, sf = q.float(), s.float()
    k = sf
    if eps is not None:
        k = F.rms_norm(sf, (sf.shape[-1],), gain.float(), eps)
    elif gain is not None:
        k = sf * gain.float()
    if cos is not None:
        if pairs:
            k = rotate_pairs(k, torch.complex(cos, sin))
        else:
            k = rotate(k, torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
    y = F.scaled_dot_product_attention(qf[:, :, None], k, sf, scale=scale, enable_gqa=q.shape[1] != s.shape[1])
    return y[:, :, 0]


def case(B=2, H=4, KV=2, D=48, L=37, pairs=False, rope=True, key="none", dtype=torch.float32, spare=5, seed=0):
    """Inputs in the cache's real form: s a view of the first L rows of a longer buffer."""
    g = torch.Generator().manual_seed(seed)
    buf = torch.randn(B, KV, L + spare, D, generator=g).to(DEVICE, dtype)
    s = buf[:, :, :L]
    q = torch.randn(B, H, D, generator=g).to(DEVICE, dtype)
    cos, sin = [t.to(DEVICE) for t in tables(L, D)] if rope else (None, None)
    gain = (1 + 0.3 * torch.randn(D, generator=g)).to(DEVICE, dtype) if key != "none" else None
    eps = 1e-6 if key == "norm" else None
    if pairs and gain is not None:
        gain = to_pairs(gain)
    return q, s, cos, sin, gain, eps


def check(q, s, cos, sin, gain, eps, pairs, num_splits=None, mma=False):
    scale = 1 / math.sqrt(q.shape[-1])
    y = td.decode_shared_kv(q, s, cos, sin, scale=scale, pairs=pairs, key_gain=gain, key_norm_eps=eps, num_splits=num_splits, mma=mma)
    ref = reference(q, s, cos, sin, scale, pairs, gain, eps)
    assert y.device == q.device and y.dtype == q.dtype and y.shape == q.shape
    tol = dict(atol=2e-5, rtol=2e-5) if q.dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(y.float(), ref, **tol)


HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}


@pytest.mark.parametrize("key", ["none", "gain", "norm"])
@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("heads", list(HEADS))
def test_matches_rope_then_sdpa_in_fp32(heads, pairs, key):
    H, KV = HEADS[heads]
    q, s, cos, sin, gain, eps = case(H=H, KV=KV, pairs=pairs, key=key)
    check(q, s, cos, sin, gain, eps, pairs)


@pytest.mark.parametrize("key", ["none", "gain", "norm"])
def test_without_rope_keys_are_the_cache(key):
    q, s, cos, sin, gain, eps = case(H=4, KV=2, rope=False, key=key)
    check(q, s, cos, sin, gain, eps, pairs=False)


@pytest.mark.parametrize("mma", [False, True])
@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("heads", ["mha", "mqa"])
def test_bf16_cache_within_bf16_tolerance(heads, pairs, mma):
    H, KV = HEADS[heads]
    q, s, cos, sin, gain, eps = case(H=H, KV=KV, D=64, L=70, pairs=pairs, key="norm", dtype=torch.bfloat16)
    check(q, s, cos, sin, gain, eps, pairs, num_splits=2, mma=mma)


@pytest.mark.parametrize("D", [48, 64])
def test_several_splits_and_a_ragged_last_tile(D):
    """L spans three tiles, the last one partial, in two splits of unequal length."""
    B, H, KV = 1, 2, 2
    block = td.block_rows(H // KV, D)
    L = 2 * block + 11
    q, s, cos, sin, gain, eps = case(B=B, H=H, KV=KV, D=D, L=L, pairs=True, key="gain")
    assert td.plan_splits(B * KV, L, block, s.device, 2) == (2, 2)
    check(q, s, cos, sin, gain, eps, pairs=True, num_splits=2)


@pytest.mark.skipif(DEVICE == "cuda", reason="counts loads in Triton's CPU interpreter")
@pytest.mark.parametrize("mma", [False, True])
def test_reads_each_cached_element_once(monkeypatch, mma):
    """Counts, in the interpreter, every address the kernel loads: each element of the valid cache
    exactly once, none of the buffer beyond L."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    original = builder.create_masked_load
    loaded = []

    def counting(ptrs, mask, other, cache_policy, is_volatile):
        loaded.append(ptrs.data[mask.data].astype(np.uint64).ravel())
        return original(ptrs, mask, other, cache_policy, is_volatile)

    monkeypatch.setattr(builder, "create_masked_load", counting)
    q, s, cos, sin, gain, eps = case(B=2, H=4, KV=2, D=48, L=150, pairs=False, key="norm", spare=20, dtype=torch.bfloat16)
    td.decode_shared_kv(q, s, cos, sin, scale=0.1, pairs=False, key_gain=gain, key_norm_eps=eps, num_splits=2, mma=mma)
    monkeypatch.setattr(builder, "create_masked_load", original)

    buf = s._base if s._base is not None else s
    lo, size = buf.data_ptr(), buf.element_size()
    addrs = np.concatenate(loaded)
    addrs = addrs[(addrs >= lo) & (addrs < lo + buf.numel() * size)]
    counts = np.bincount(((addrs - lo) // size).astype(np.int64), minlength=buf.numel()).reshape(buf.shape)
    assert counts[:, :, : s.shape[2]].min() == counts[:, :, : s.shape[2]].max() == 1
    assert counts[:, :, s.shape[2]:].sum() == 0


def test_shapes_that_do_not_fit_are_refused():
    q, s, cos, sin, gain, eps = case(H=3, KV=2)
    with pytest.raises(ValueError, match="H % KV"):
        td.decode_shared_kv(q, s, cos, sin, scale=0.1, pairs=False)
