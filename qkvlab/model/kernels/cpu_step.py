"""The whole-token decode step in C (decode_step.c): its library and the tables it reads.

A model=small token decoded through the modules made about 300 Python-level calls (module calls, views,
small ops around the C kernels); on a Zen 4 EPYC they took 1.2-1.6 ms of a 2.4-5 ms bf16 token, paid
alike by every variant. decode_step.c runs the same C functions in the same order in one call. Which
models take it is qkvlab/model/decode_step.py's business; this module only packs pointers and sizes.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Optional

from qkvlab.model.kernels import cpu_build


class StepLayer(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("norm1", "qkv", "out", "norm2", "up", "down", "k", "v")),
        ("cb", ctypes.c_long), ("ckv", ctypes.c_long), ("cl", ctypes.c_long),
        ("eps1", ctypes.c_float), ("eps2", ctypes.c_float),
    ]


class StepModel(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_int) for name in ("n_layers", "bf16", "d_model", "q_heads", "kv_heads", "d_head", "d_ff", "has_q", "max_len")),
        ("scale", ctypes.c_float),
        ("cos_t", ctypes.c_void_p), ("sin_t", ctypes.c_void_p),
        ("layers", ctypes.POINTER(StepLayer)),
        ("embedding", ctypes.c_void_p), ("final_norm", ctypes.c_void_p), ("head", ctypes.c_void_p),
        ("vocab", ctypes.c_int), ("final_eps", ctypes.c_float),
    ]


@functools.lru_cache(maxsize=1)
def library() -> Optional[ctypes.CDLL]:
    lib = cpu_build.load("decode_step")
    if lib is None:
        return None
    p, i, L = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    model = ctypes.POINTER(StepModel)
    lib.qkvlab_decode_step.argtypes = [model, p, p, i, i, p, p, i]
    lib.qkvlab_decode_step.restype = i
    lib.qkvlab_decode_step_scratch.argtypes = [model, i]
    lib.qkvlab_decode_step_work.argtypes = [model, i, i]
    lib.qkvlab_decode_step_scratch.restype = lib.qkvlab_decode_step_work.restype = L
    return lib


def available() -> bool:
    return library() is not None
