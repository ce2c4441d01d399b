"""Decoding attention over a one-tensor KV cache (`k_eq_v`, `q_eq_k_eq_v`, their GQA/MQA forms)
that reads each cached element once per step.

Those variants cache S, unrotated, per KV head: values are S, keys are RoPE(S) (or RoPE(g*S) with
v_norm, RoPE(rmsnorm(S)*g) with qk_norm alone, plain S without RoPE). Rotating the whole cache into
a new tensor and handing both to SDPA reads S, writes the keys, reads them and reads S again: about
twice mha's K+V traffic, which throws away the halved cache. Here one Triton program per
(batch, KV head, slice of the cache) loads a tile of S once, as the two halves of each rotary pair,
rotates the keys in registers, scores all query heads of the group, and accumulates p @ S from the
same tile with an online softmax (FlashAttention, Dao et al. 2022); the cache length is split over
programs and the partial (max, sum, acc) merged by a second small kernel (flash-decoding, Dao,
Haziza, Massa, Sizov 2023), so one sequence at long context fills the GPU.

RoPE follows Su et al. 2021 (RoFormer) in the two layouts attention.py uses: rotate-half (pair i is
features i and i + D/2, GPT-NeoX/Llama) and pairs side by side (2i, 2i+1, GPT-J / complex form),
with one angle per pair: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin.

No library kernel does this exactly (checked 2026-12): FlashInfer's decode with
pos_encoding_mode="ROPE_LLAMA" rotates keys on the fly but takes K and V as two tensors (each
loaded on its own, so S would be read twice), derives angles from rope_theta rather than tables,
knows only the rotate-half layout and no key gain or key RMSNorm; flash-attn's
flash_attn_with_kvcache(rotary_cos=...) rotates only the new key before appending it, so its cache
holds rotated keys and needs a separate V cache.

Triton is optional: `available()` says whether it imports; the kernels (kernels/_decode_jit.py) are
imported on first use. On CPU tensors they run only under TRITON_INTERPRET=1 (tests do that)."""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from typing import Optional

import torch

LOG2E = 1.4426950408889634
# The launch plan, from a sweep on an H200 (triton 3.6, bf16 cache, d_head 64, fp32 tables,
# scripts/bench_gpu_decode.py --tune): 32 rows per tile, 2 warps, 3 loads in flight, 8 programs per SM
# came within 7% of the best of 21 plans both for one sequence at 32768 tokens and for 16 at 8192.
PROGRAMS_PER_SM = 8
# Upper bound on elements of one (heads x rows x half-features) accumulator, to stay in registers.
TILE_ELEMENTS = 1024
NUM_WARPS = 2
NUM_STAGES = 3


@lru_cache(maxsize=None)
def available() -> bool:
    """Whether Triton imports here (it does not say whether a GPU is present)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def block_rows(group: int, d_head: int) -> int:
    """Cache rows per tile: as many as fit TILE_ELEMENTS for this group size and head size, 8..128."""
    return max(8, min(128, TILE_ELEMENTS // (_pow2(group) * _pow2(d_head // 2))))


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def plan_splits(
    batch_kv: int, length: int, block: int, device: torch.device, num_splits: Optional[int] = None, per_sm: int = 0
) -> tuple[int, int]:
    """(tiles per split, splits): enough programs to fill the device, no split empty."""
    tiles = math.ceil(length / block)
    want = num_splits if num_splits is not None else math.ceil((per_sm or PROGRAMS_PER_SM) * _sm_count(device) / batch_kv)
    want = max(1, min(want, tiles))
    per = math.ceil(tiles / want)
    return per, math.ceil(tiles / per)


def decode_shared_kv(
    q: torch.Tensor,
    s: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    *,
    scale: float,
    pairs: bool,
    key_gain: Optional[torch.Tensor] = None,
    key_norm_eps: Optional[float] = None,
    num_splits: Optional[int] = None,
    block: Optional[int] = None,
    num_warps: Optional[int] = None,
    num_stages: Optional[int] = None,
    programs_per_sm: Optional[int] = None,
    mma: bool = False,
) -> torch.Tensor:
    """softmax(scale * q · keys(S)ᵀ) @ S for one new token, accumulated in fp32, in q's dtype.

    q (B, H, D): rotated (and normed) queries in S's feature layout; s (B, KV, L, D): the valid
    cache (any strides), H % KV == 0 with query head h reading KV head h // (H/KV), as SDPA's
    enable_gqa; cos, sin (L, D/2): angles per cached position and pair, or both None (no RoPE);
    pairs: layout of q and s (False rotate-half, True side by side); key_gain (D,) in s's layout
    scales the keys, after an RMSNorm with eps key_norm_eps when that is given. The rest override
    the launch plan (tests, tuning): num_splits of L, block (cache rows per tile, a power of two),
    num_warps, num_stages (loads in flight per program), programs_per_sm (the split target);
    mma=True (bf16/fp16 caches only; not yet timed on a GPU) computes scores and p @ S with
    tl.dot on tensor cores, keys and probabilities rounded to the cache's dtype first."""
    from . import _decode_jit as jit

    B, H, D = q.shape
    Bs, KV, L, Ds = s.shape
    if Bs != B or Ds != D or H % KV or D % 2 or L < 1:
        raise ValueError(f"decode_shared_kv: q {tuple(q.shape)} and s {tuple(s.shape)} do not fit (B, H, D) and (B, KV, L>=1, D) with H % KV == 0, D even")
    rope = cos is not None
    if rope != (sin is not None) or (rope and (cos.shape != (L, D // 2) or sin.shape != (L, D // 2))):
        raise ValueError(f"decode_shared_kv: cos and sin must both be None or both (L, D/2) = ({L}, {D // 2})")
    if key_norm_eps is not None and key_gain is None:
        raise ValueError("decode_shared_kv: key_norm_eps needs key_gain (the key norm's weight)")
    if key_gain is not None and key_gain.shape != (D,):
        raise ValueError(f"decode_shared_kv: key_gain must be ({D},), got {tuple(key_gain.shape)}")
    if mma and s.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"decode_shared_kv: mma=True needs a bf16 or fp16 cache, not {s.dtype}")
    G = H // KV
    block = block or (64 if mma else block_rows(G, D))
    per, n_splits = plan_splits(B * KV, L, block, s.device, num_splits, programs_per_sm or PROGRAMS_PER_SM)
    f32 = dict(device=q.device, dtype=torch.float32)
    pm = torch.empty(B * KV * n_splits * G, **f32)
    pl = torch.empty_like(pm)
    pacc = torch.empty(B * KV * n_splits * G * D, **f32)
    y = torch.empty(B, H, D, device=q.device, dtype=q.dtype)
    gain = key_gain if key_gain is not None else q
    cs = cos if rope else q
    sn = sin if rope else q
    key_mode = 2 if key_norm_eps is not None else (1 if key_gain is not None else 0)
    jit.split_kernel[(B * KV, n_splits)](
        q, s, cs, sn, gain, pm, pl, pacc,
        L, per, n_splits, scale * LOG2E, float(key_norm_eps or 0.0),
        q.stride(0), q.stride(1), q.stride(2),
        s.stride(0), s.stride(1), s.stride(2), s.stride(3),
        cs.stride(0) if rope else 0, cs.stride(1) if rope else 0,
        sn.stride(0) if rope else 0, sn.stride(1) if rope else 0,
        gain.stride(0) if key_gain is not None else 0,
        KV, G, GP=max(16, _pow2(G)) if mma else _pow2(G), D=D, D2P=max(16, _pow2(D // 2)) if mma else _pow2(D // 2), BLOCK_L=block,
        PAIRS=bool(pairs), ROPE=rope, KEY_MODE=key_mode,
        STAGES=num_stages or NUM_STAGES, MMA=mma, EMULATE=q.device.type == "cpu", num_warps=num_warps or NUM_WARPS,
    )
    jit.reduce_kernel[(B * H,)](pm, pl, pacc, y, n_splits, G, D=D, DP=_pow2(D), NSP=_pow2(n_splits))
    return y
