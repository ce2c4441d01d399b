"""Which kernel decodes a one-tensor cache, and the call into it.

A `k_eq_v` or `q_eq_k_eq_v` layer caches S once per KV head; its keys are RoPE(key_map(S)) and its
values S. Decoding one token reads each cached element once through a fused kernel: the C kernel on
CPUs (kernels/cpu_decode.py), the Triton kernel on CUDA (kernels/triton_decode.py, with the `triton`
extra). Where neither applies (no compiler, no Triton, fp64, a head size the kernel does not take)
decoding keeps the PyTorch path. Whether the kernel applies is fixed per device, dtype and shape, so
a cache keeps one feature layout from prefill to the last token: rotate-half with the kernel, rotary
pairs side by side (PyTorch's complex path) without it in fp32.

On CPUs the same C kernel also decodes two-tensor caches (`mha`, `q_eq_k`, GQA, MQA), keys as cached
and values apart, so the comparison with `mha` is kernel against kernel, not against a slower SDPA.

QKVLAB_DECODE_KERNEL=off turns the kernels off, and with them inference's oneDNN and C Linears on
CPUs (inference_linear.py): plain PyTorch, which bench compares against.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

POLICIES = ("auto", "off")
# Kernels that also decode `mha`'s and GQA's two tensors (keys as cached, values apart): on CPUs the C
# kernel ran 1.4-2.2x (fp32) and 5x (bf16) faster than SDPA over the same K and V (bench_cpu_decode.py);
# on CUDA, SDPA's flash-decoding is already the baseline the Triton kernel is compared with.
TWO_TENSOR_KERNELS = ("cpu",)
_policy: Optional[str] = None


def policy() -> str:
    return _policy or os.environ.get("QKVLAB_DECODE_KERNEL", "auto")


def set_policy(name: Optional[str]) -> None:
    """`auto` (the kernels and the fastest inference Linears where they apply), `off` (plain PyTorch), None (back to the environment's)."""
    global _policy
    if name is not None and name not in POLICIES:
        raise ValueError(f"decode kernel policy {name!r}; choose one of {', '.join(POLICIES)}")
    _policy = name


def check_policy() -> None:
    """A bad QKVLAB_DECODE_KERNEL fails at start-up in one line."""
    from qkvlab.errors import ConfigError

    if policy() not in POLICIES:
        raise ConfigError(f"QKVLAB_DECODE_KERNEL={policy()!r} is not valid; choose one of: {', '.join(POLICIES)}")


@functools.lru_cache(maxsize=None)
def _kernel(device_type: str, dtype: torch.dtype, heads: int, kv_heads: int, d_head: int) -> Optional[str]:
    if device_type == "cpu" and dtype in (torch.float32, torch.bfloat16):
        from qkvlab.model.kernels import cpu_decode

        if d_head % 16 == 0 and d_head <= 256 and heads // kv_heads <= 32 and cpu_decode.available():
            return "cpu"
    if device_type == "cuda" and dtype in (torch.float32, torch.bfloat16, torch.float16):
        try:
            from qkvlab.model.kernels import triton_decode
        except ImportError:
            return None
        if d_head % 2 == 0 and d_head <= 256 and triton_decode.available():
            return "triton"
    return None


def kernel_for(device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int, d_head: int) -> Optional[str]:
    """The fused kernel that decodes this cache ("cpu", "triton"), or None for the PyTorch path."""
    if policy() == "off":
        return None
    return _kernel(device.type, dtype, heads, kv_heads, d_head)


def decode(
    q: torch.Tensor,
    s: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    *,
    scale: float,
    key_gain: Optional[torch.Tensor],
    key_norm_eps: Optional[float],
    values: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Attention of one new token per sequence over the cached S (B, KV, L, D), rotate-half layout:
    q (B, H, D) rotated queries, cos/sin (>= L, D/2) angle tables; (B, H, D) out. With `values`, s is
    the cached (rotated) K and no tables or key map apply: `mha`'s and GQA's caches on a CPU."""
    if values is not None:
        from qkvlab.model.kernels.cpu_decode import decode_shared_kv

        return decode_shared_kv(q, s, None, None, scale=scale, values=values)
    if s.device.type == "cpu":
        from qkvlab.model.kernels.cpu_decode import decode_shared_kv
    else:
        from qkvlab.model.kernels.triton_decode import decode_shared_kv

        return decode_shared_kv(q, s, cos, sin, scale=scale, pairs=False, key_gain=key_gain, key_norm_eps=key_norm_eps)
    return decode_shared_kv(q, s, cos, sin, scale=scale, key_gain=key_gain, key_norm_eps=key_norm_eps)
