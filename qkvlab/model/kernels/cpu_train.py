"""One-pass C versions of the default block's row-wise training ops on CPUs (fp32): RMSNorm forward
and backward, and rotate-half RoPE; and for inference (fp32 or bf16), RMSNorm's forward, RoPE and SwiGLU.

PyTorch runs each as a chain of elementwise passes over (B, T, C) activations: at model=small's
training shape on a 2-core Xeon the RMSNorms (forward and backward) and the RoPEs took about 70 and
50 ms of a 1.46 s step (the fused LayerNorm of a nanoGPT block about 26), which alone put the
default block more than 5% per FLOP behind nanoGPT's. Source: train_ops.c, built by cpu_build.py;
where it cannot be built the callers (rms_norm.py, attention.rotate) keep their PyTorch paths.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Optional

import torch

from qkvlab.model.kernels import cpu_build

# Rows below which a row-wise op runs on one thread.
FEW_ROWS = 64


@functools.lru_cache(maxsize=1)
def library() -> Optional[ctypes.CDLL]:
    lib = cpu_build.load("train_ops")
    if lib is None:
        return None
    p, i, L, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
    lib.qkvlab_rms_norm_forward.argtypes = [p, p, p, p, L, i, f, i]
    lib.qkvlab_rms_norm_forward_bf16.argtypes = [p, p, p, L, i, f, i]
    lib.qkvlab_rms_norm_forward_bf16.restype = None
    lib.qkvlab_rms_norm_backward.argtypes = [p, p, p, p, p, p, L, i, i]
    lib.qkvlab_rope.argtypes = lib.qkvlab_rope_bf16.argtypes = [p, L, L, L, p, L, L, L, p, p, L, i, i, i, i, f, i]
    lib.qkvlab_swiglu.argtypes = [p, p, L, i, i, i]
    for fn in (lib.qkvlab_rms_norm_forward, lib.qkvlab_rms_norm_backward, lib.qkvlab_rope, lib.qkvlab_rope_bf16, lib.qkvlab_swiglu):
        fn.restype = None
    return lib


def available() -> bool:
    return library() is not None


def _fp32_cpu(*ts: torch.Tensor) -> bool:
    """Under torch.compile the PyTorch forms stay, for Inductor to fuse (it cannot trace a C call)."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in ts) and not torch.compiler.is_compiling()


def rms_norm_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return _fp32_cpu(x, weight) and weight.dim() == 1 and x.shape[-1] == weight.shape[0] and available()


def rms_norm_inference_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """fp32, or bf16 rows and gains (a model cast to bf16; autocast keeps its own rules), on a CPU."""
    if x.dtype == weight.dtype == torch.bfloat16 and x.device.type == weight.device.type == "cpu":
        plain = not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
        return plain and weight.dim() == 1 and x.shape[-1] == weight.shape[0] and available()
    return rms_norm_applies(x, weight)


def rms_norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float, save: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(y, inv): y = x · inv · weight, inv = 1/sqrt(mean(x²) + eps) per row (saved for the backward;
    None without `save`, for inference). A few rows (decoding's one token) run on one thread: waking
    the others costs more than the row."""
    x = x.contiguous()
    D = x.shape[-1]
    rows = x.numel() // D
    y = torch.empty_like(x)
    w = weight.detach().contiguous()
    threads = 1 if rows < FEW_ROWS else torch.get_num_threads()
    if x.dtype == torch.bfloat16:
        if save:
            raise ValueError("rms_norm_forward: bf16 rows are for inference (save=False)")
        library().qkvlab_rms_norm_forward_bf16(x.data_ptr(), w.data_ptr(), y.data_ptr(), rows, D, eps, threads)
        return y, None
    inv = torch.empty(x.shape[:-1], dtype=torch.float32) if save else None
    library().qkvlab_rms_norm_forward(x.data_ptr(), w.data_ptr(), y.data_ptr(), None if inv is None else inv.data_ptr(), rows, D, eps, threads)
    return y, inv


def rms_norm_backward(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight) of rms_norm_forward's y for the gradient g."""
    g, x = g.contiguous(), x.contiguous()
    D = x.shape[-1]
    threads = torch.get_num_threads()
    dx = torch.empty_like(x)
    parts = torch.empty(threads, D, dtype=torch.float32)
    w = weight.detach().contiguous()
    library().qkvlab_rms_norm_backward(
        g.data_ptr(), x.data_ptr(), w.data_ptr(), inv.data_ptr(), dx.data_ptr(), parts.data_ptr(), x.numel() // D, D, threads
    )
    return dx, parts.sum(0)


def rope_applies(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """x (B, H, T, D) with a contiguous last dimension and tables (T, D) of one row stride, all fp32 on the
    CPU, or all bf16 (a model cast to bf16 for inference; its tables are bf16 too) with D <= 256."""
    bf16 = x.dtype == cos.dtype == sin.dtype == torch.bfloat16
    return (
        x.dim() == 4
        and (_fp32_cpu(x, cos, sin) or (bf16 and x.shape[-1] <= 256 and x.device.type == cos.device.type == sin.device.type == "cpu"
                                        and not torch.compiler.is_compiling()))
        and x.shape[-1] % 2 == 0
        and cos.shape == sin.shape == x.shape[-2:]
        and x.stride(-1) == cos.stride(-1) == sin.stride(-1) == 1
        and cos.stride(0) == sin.stride(0)
        and available()
    )


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """x·cos + sign·rotate_half(x)·sin in one pass, into a tensor laid out like x (a view of the
    fused projection keeps its (B, T, H, D) order, which SDPA reads as well as any). bf16 is computed in
    fp32 and rounded once (PyTorch's bf16 form rounds twice): decoding's queries and keys in one C
    call where PyTorch's form runs six small ops (through `rotate`, 11.5 against 15.8 µs a call on a Zen 4)."""
    B, H, T, D = x.shape
    if x.dtype == torch.bfloat16 and D > 256:
        raise ValueError(f"cpu_train.rope: bf16 rows of at most 256 features (got {D}); rope_applies says which inputs it takes")
    y = torch.empty_like(x)
    fn = library().qkvlab_rope_bf16 if x.dtype == torch.bfloat16 else library().qkvlab_rope
    fn(
        x.data_ptr(), x.stride(0), x.stride(1), x.stride(2), y.data_ptr(), y.stride(0), y.stride(1), y.stride(2),
        cos.data_ptr(), sin.data_ptr(), cos.stride(0), B, H, T, D, sign, 1 if B * H * T < FEW_ROWS else torch.get_num_threads(),
    )
    return y


def swiglu_applies(h: torch.Tensor) -> bool:
    """Decoding's few [gate | up] rows (under FEW_ROWS) on a CPU, fp32 or bf16, contiguous."""
    return (
        h.device.type == "cpu"
        and h.dim() >= 1
        and 0 < h.numel() < FEW_ROWS * h.shape[-1]
        and h.dtype in (torch.float32, torch.bfloat16)
        and h.shape[-1] % 2 == 0
        and h.is_contiguous()
        and not torch.compiler.is_compiling()
        and available()
    )


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate)·up of h = [gate | up] in one pass (bf16 computed in fp32 and rounded once)."""
    F = h.shape[-1] // 2
    rows = h.numel() // (2 * F) if F else 0
    y = torch.empty(*h.shape[:-1], F, dtype=h.dtype)
    if rows:
        library().qkvlab_swiglu(h.data_ptr(), y.data_ptr(), rows, F, int(h.dtype == torch.bfloat16), 1 if rows < FEW_ROWS else torch.get_num_threads())
    return y
