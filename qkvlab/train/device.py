"""Where and in what precision a run computes."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from qkvlab.errors import ConfigError
from qkvlab.model.inference_linear import use_fast_linears


def check_device(name: str) -> None:
    """A device this torch cannot use fails at start-up in one line, not mid-run in an assertion."""
    if name == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but no GPU is visible"
        raise ConfigError(
            f"train.device=cuda but torch.cuda.is_available() is False (this torch is {torch.__version__}, {build}); "
            "use train.device=auto or cpu"
        )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(
            f"train.device=mps but torch.backends.mps.is_available() is False (this torch is {torch.__version__}); "
            "use train.device=auto or cpu"
        )


def pick_device(name: str) -> torch.device:
    if name != "auto":
        check_device(name)
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpuinfo(field: str) -> str | None:
    """The first `field` line of /proc/cpuinfo (Linux), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field):
            return line.partition(":")[2].strip()
    return None


def cpu_flags() -> set[str]:
    return set((cpuinfo("flags") or "").split())


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_matmul() -> bool:
    """Native bf16 matrix units (AMX or AVX512-BF16) behind oneDNN; without them CPU bf16
    matmuls are emulated and many times slower than fp32."""
    return torch.backends.mkldnn.is_available() and bool(cpu_flags() & set(BF16_CPU_FLAGS))


# On a CPU with bf16 matrix instructions, bf16 autocast trains faster than fp32 from this model width
# up (batch 64 x 64, two blocks, d_ff = 4 d_model): on a 2-core Xeon with AMX it ran 0.53x fp32's
# speed at d_model 64, level at 128, 1.54x at 256 and 1.87x at 384; on a 2-core Zen 4 EPYC with
# AVX512-BF16 and no AMX 0.63x, 1.02-1.16x, 1.47x and 1.5-1.7x (README: precision and compilation).
BF16_MIN_D_MODEL = 256


def precision_choice(name: str, device: torch.device, d_model: int) -> tuple[str, str]:
    """The precision a run computes in, and why, for the summary line: `auto` picks per machine and
    model, so two machines can train the same config in different precisions and report different figures.

    On a CPU `auto` is bf16 only with bf16 matrix instructions behind oneDNN (AMX tiles or
    AVX512-BF16 dot products), and only for models of d_model >= BF16_MIN_D_MODEL: narrower matmuls
    are too small to repay autocast's casts (the default tiny run, d_model 64, trained at half fp32's
    speed in bf16 on an AMX Xeon and ended at a worse val loss, 0.1203 against 0.1184; at 0.81x on an
    AVX512-BF16 EPYC, 0.1261 against 0.1203). Without either, bf16 matmuls are emulated (see the
    README's measuring cost)."""
    if name != "auto":
        return name, f"precision={name} (set by train.precision)"
    if device.type == "cuda":
        return "bf16", "precision=auto -> bf16 (CUDA)"
    if device.type == "cpu":
        flags = cpu_flags()
        unit = next((f for f in BF16_CPU_FLAGS if f in flags), None)
        if unit is None:
            return "fp32", "precision=auto -> fp32 (CPU without native bf16 matmuls: no AMX or AVX512-BF16)"
        if not torch.backends.mkldnn.is_available():
            return "fp32", f"precision=auto -> fp32 (the CPU has {unit}, but this torch has no oneDNN)"
        what = "AMX bf16 tiles" if unit == "amx_bf16" else "bf16 dot products"
        if d_model >= BF16_MIN_D_MODEL:
            return "bf16", f"precision=auto -> bf16 (CPU with {what}: {unit}; d_model {d_model} >= {BF16_MIN_D_MODEL})"
        return "fp32", (f"precision=auto -> fp32 ({what} ({unit}), but d_model {d_model} < {BF16_MIN_D_MODEL}: "
                        "bf16 autocast trains slower than fp32 at that width)")
    return "fp32", f"precision=auto -> fp32 ({device.type})"


def resolve_precision(name: str, device: torch.device, d_model: int) -> str:
    """`auto` is bf16 autocast on CUDA and on CPUs with AMX or AVX512-BF16 for models from BF16_MIN_D_MODEL wide,
    fp32 elsewhere (precision_choice says why)."""
    return precision_choice(name, device, d_model)[0]


def configure_device(device: torch.device) -> None:
    """TF32 matmuls on CUDA: fp32 parameters, tensor-core speed for what autocast leaves in fp32."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compute_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_model(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model in the dtype it infers in, cast once: eval, generate, the lm-eval harness and bench's
    decoding. Autocast would re-cast every weight on every forward, which for one-token decoding costs
    more than the bf16 matmuls save (bf16 decoding ran at 0.78x fp32 that way); the KV cache is kept in
    the same dtype. Training keeps autocast over fp32 weights. On a CPU the Linears compute through the path that
    measures fastest here: PyTorch's, oneDNN's or a C loop for decoding's few rows
    (qkvlab/model/inference_linear.py)."""
    model = model.to(compute_dtype(precision)).eval()
    use_fast_linears(model)
    return model
