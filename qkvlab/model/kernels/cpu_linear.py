"""One-row (few-row) Linears on CPUs in C: the matrix-vector products of batch-1 decoding.

Decoding reads every weight once per token, so these products are most of a small model's token
time, and both BLAS libraries bundled with PyTorch run them well below the memory's speed: on a
2-core AMD EPYC (AVX2), `model=small`'s products read fp32 weights at 11 GB/s through MKL and 13
through oneDNN, where a plain threaded loop over four weight rows at a time reads 21, and bf16
weights at 10 GB/s through F.linear. The loop also prefetches the weight rows it will read next: rows
are too short for the hardware prefetchers, and on a Zen 4 EPYC this took bf16 weights read from
memory from 11-17 GB/s to 25-32 (two threads), and `scripts/bench_linear.py`'s one-row `model=small`
set from 12.6 to 21.8 GB/s. Whether this path wins on a machine is measured, not assumed
(qkvlab/model/inference_linear.py). Source: few_rows_linear.c, built by cpu_build.py.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Optional

import torch

from qkvlab.model.kernels import cpu_build

# More rows than this and a GEMM library's blocking pays off (prefill); the C loop is for decoding.
MAX_ROWS = 8
DTYPES = (torch.float32, torch.bfloat16)


@functools.lru_cache(maxsize=1)
def library() -> Optional[ctypes.CDLL]:
    lib = cpu_build.load("few_rows_linear")
    if lib is None:
        return None
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.qkvlab_few_rows_linear.argtypes = [p, i, p, i, p, p, i, i, i, i]
    lib.qkvlab_few_rows_linear.restype = ctypes.c_int
    return lib


def available() -> bool:
    return library() is not None


def weight_applies(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """The half of `applies` that depends on the weights alone, which a module may check once per weight
    (InferenceLinear): CPU, fp32 or bf16, rows contiguous, the input size a multiple of 16, the bias in
    the weight's dtype, and the library built."""
    K = weight.shape[-1]
    return (
        weight.device.type == "cpu"
        and weight.dtype in DTYPES
        and weight.dim() == 2
        and weight.stride(1) == 1
        and weight.stride(0) == K
        and (bias is None or (bias.dtype == weight.dtype and bias.is_contiguous()))
        and K % 16 == 0
        and available()
    )


def input_applies(x: torch.Tensor, K: int) -> bool:
    """The half that depends on the input: CPU, fp32 or bf16 (x's dtype is the output's), K features, at
    most MAX_ROWS rows, and not under torch.compile (Inductor cannot trace a C call)."""
    return (
        x.device.type == "cpu"
        and x.dtype in DTYPES
        and x.shape[-1] == K
        and 0 < x.numel() // K <= MAX_ROWS
        and not torch.compiler.is_compiling()
    )


def applies(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether `few_rows_linear` takes these: `weight_applies` and `input_applies`."""
    return weight_applies(weight, bias) and input_applies(x, weight.shape[-1])


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for inputs `applies` accepts, summed in fp32, the result in x's dtype."""
    N, K = weight.shape
    x = x.contiguous()
    y = torch.empty(*x.shape[:-1], N, dtype=x.dtype)
    status = library().qkvlab_few_rows_linear(
        x.data_ptr(), int(x.dtype == torch.bfloat16), weight.data_ptr(), int(weight.dtype == torch.bfloat16),
        None if bias is None else bias.data_ptr(), y.data_ptr(), x.numel() // K, N, K, torch.get_num_threads(),
    )
    if status:
        raise ValueError(f"few_rows_linear: unsupported shape (x {tuple(x.shape)}, weight {tuple(weight.shape)})")
    return y
