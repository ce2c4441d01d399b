"""The CPU path of one-tensor decoding: a small C kernel, compiled once per machine.

`k_eq_v` halves the cache only if decoding reads the cached S once: keys are
RoPE(S), values are S. PyTorch cannot express that in one pass. Eager code
rotates the whole cache into a new tensor and SDPA then reads it and S again
(twice `mha`'s traffic); torch.compile (Inductor, measured here) fuses the
rotation into the scores but still reads S a second time for the values, and
is no faster than `mha`. A flash-decoding loop in C does it: a block of S rows
is loaded into L1, keys are formed there for every query head of the group,
an online softmax updates, and the same rows are the values. No library ships
this for CPUs (the GPU libraries' RoPE-on-the-fly decode kernels are CUDA-only).

The source (shared_kv_decode.c) is compiled once per machine (cpu_build.py); where
no compiler works, `library()` is None and decoding keeps the PyTorch path.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Optional

import torch

from qkvlab.model.kernels import cpu_build


@functools.lru_cache(maxsize=1)
def library() -> Optional[ctypes.CDLL]:
    """The compiled kernel, or None where it cannot be built (no C compiler, no OpenMP)."""
    lib = cpu_build.load("shared_kv_decode")
    if lib is None:
        return None
    fn = lib.qkvlab_shared_kv_decode
    p, i, L, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
    fn.argtypes = [p, p, i, L, L, L, p, i, p, i, i, i, i, i, p, p, i, L, p, f, f, i, i, p]
    fn.restype = ctypes.c_int
    lib.qkvlab_decode_splits.argtypes = [i, i, i]
    lib.qkvlab_decode_splits.restype = i
    lib.qkvlab_decode_work_floats.argtypes = [i, i, i, i]
    lib.qkvlab_decode_work_floats.restype = L
    return lib


def available() -> bool:
    return library() is not None


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _cache_kind(s: torch.Tensor, q: torch.Tensor) -> int:
    """0: fp32 cache; 1: bf16 cache; 2: bf16 cache and bf16 queries, which the kernel may pack to bf16 exactly
    and score with the CPU's bf16 dot products (AVX512-BF16), where fp32 queries keep fp32 arithmetic."""
    if s.dtype != torch.bfloat16:
        return 0
    return 2 if q.dtype == torch.bfloat16 else 1


def decode_shared_kv(
    q: torch.Tensor,
    s: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    *,
    scale: float,
    key_gain: Optional[torch.Tensor] = None,
    key_norm_eps: Optional[float] = None,
    values: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """softmax(scale · q·keysᵀ) @ S for one new token per sequence; with `values` (a separate V cache of
    s's shape and dtype: `mha`, GQA) the keys are s as cached and the result is softmax(scale · q·sᵀ) @ values.

    q: (B, H, D) rotated queries; s: (B, KV, L, D), the valid part of the cache in rotate-half layout
    (a view of the buffer); cos, sin: (≥L, D/2) fp32 or bf16 angle tables of the cached positions (one value per
    rotary pair, rows contiguous), or None without RoPE; keys are RoPE(key_map(S)), key_map = rmsnorm(S)·gain with key_norm_eps, S·gain with a gain
    alone, else S. Returns (B, H, D) in q's dtype."""
    lib = library()
    B, H, D = q.shape
    _, KV, L, _ = s.shape
    if s.stride(-1) != 1:
        s = s.contiguous()
    if values is not None:
        if values.shape != s.shape or values.dtype != s.dtype or cos is not None or key_gain is not None or key_norm_eps is not None:
            raise ValueError("shared_kv_decode: values must match s in shape and dtype, and come without RoPE or a key map")
        if values.stride() != s.stride():
            s, values = s.contiguous(), values.contiguous()
    dtype = q.dtype
    if dtype not in (torch.float32, torch.bfloat16):
        q = q.float()
    q = q.contiguous()  # fp32 or bf16 as it is: the kernel widens bf16 queries and rounds its output once
    out = torch.empty(B, H, D, dtype=q.dtype)
    threads = torch.get_num_threads()
    splits = lib.qkvlab_decode_splits(B, L, threads)
    work = torch.empty(lib.qkvlab_decode_work_floats(B, H, D, splits), dtype=torch.float32)
    cos_p = sin_p = None
    row = tables_bf16 = 0
    if cos is not None:
        # fp32 or bf16 tables are read as they are (converting a bf16 model's tables cost 0.1 ms a layer at 8192)
        if not (cos.dtype == sin.dtype and cos.dtype in (torch.float32, torch.bfloat16) and cos.stride(-1) == sin.stride(-1) == 1):
            cos, sin = cos.float().contiguous(), sin.float().contiguous()
        if cos.stride(0) != sin.stride(0) or cos.shape[0] < L:
            raise ValueError("shared_kv_decode: cos and sin must be (>= L, D/2) tables of one row stride")
        cos_p, sin_p, row, tables_bf16 = cos.data_ptr(), sin.data_ptr(), cos.stride(0), int(cos.dtype == torch.bfloat16)
    gain = None if key_gain is None else key_gain.float().contiguous()
    eps = -1.0 if key_norm_eps is None else float(key_norm_eps)
    status = lib.qkvlab_shared_kv_decode(
        s.data_ptr(), _ptr(values), _cache_kind(s, q), s.stride(0), s.stride(1), s.stride(2),
        q.data_ptr(), int(q.dtype == torch.bfloat16), out.data_ptr(), B, H, KV, L, D, cos_p, sin_p, tables_bf16, row, _ptr(gain),
        eps, float(scale), splits, threads, work.data_ptr(),
    )
    if status:
        raise ValueError(f"shared_kv_decode: unsupported shape (B={B}, H={H}, KV={KV}, D={D})")
    return out if out.dtype == dtype else out.to(dtype)
