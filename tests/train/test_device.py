from __future__ import annotations

import pytest
import torch

from qkvlab.train import device as dev


@pytest.fixture
def flags(monkeypatch):
    def set_flags(*names: str) -> None:
        monkeypatch.setattr(dev, "cpu_flags", lambda: set(names))
        dev.cpu_has_bf16_matmul.cache_clear()

    yield set_flags
    dev.cpu_has_bf16_matmul.cache_clear()


def test_auto_precision_is_bf16_only_where_bf16_matmuls_are_faster(flags):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    flags("avx2", "fma")
    assert dev.resolve_precision("auto", cpu, 384) == "fp32"
    assert dev.resolve_precision("auto", cuda, 64) == "bf16"
    assert dev.resolve_precision("bf16", cpu, 64) == "bf16"
    flags("avx2", "amx_bf16", "amx_tile")
    assert dev.resolve_precision("auto", cpu, 256) == ("bf16" if torch.backends.mkldnn.is_available() else "fp32")
    # With AMX, narrow models train slower in bf16: 0.53x fp32's speed at d_model 64, level at 128.
    assert dev.resolve_precision("auto", cpu, 128) == "fp32"
    flags("avx512_bf16")
    # AVX512-BF16 without AMX (Zen 4 EPYC): 0.63x fp32's speed at d_model 64, level at 128, 1.47x at 256.
    assert dev.resolve_precision("auto", cpu, 384) == ("bf16" if torch.backends.mkldnn.is_available() else "fp32")
    assert dev.resolve_precision("auto", cpu, 128) == "fp32"
    assert dev.resolve_precision("fp32", cpu, 768) == "fp32"



def test_the_summary_says_why_auto_picked_its_precision(flags):
    cpu = torch.device("cpu")
    flags("avx2", "fma")
    assert dev.precision_choice("auto", cpu, 64) == ("fp32", "precision=auto -> fp32 (CPU without native bf16 matmuls: no AMX or AVX512-BF16)")
    assert dev.precision_choice("auto", torch.device("cuda"), 64) == ("bf16", "precision=auto -> bf16 (CUDA)")
    assert dev.precision_choice("bf16", cpu, 64) == ("bf16", "precision=bf16 (set by train.precision)")
    flags("amx_bf16", "avx512_bf16")
    if torch.backends.mkldnn.is_available():
        assert dev.precision_choice("auto", cpu, 384) == ("bf16", "precision=auto -> bf16 (CPU with AMX bf16 tiles: amx_bf16; d_model 384 >= 256)")
        assert dev.precision_choice("auto", cpu, 64) == (
            "fp32", "precision=auto -> fp32 (AMX bf16 tiles (amx_bf16), but d_model 64 < 256: bf16 autocast trains slower than fp32 at that width)")
    flags("avx512_bf16")
    if torch.backends.mkldnn.is_available():
        assert dev.precision_choice("auto", cpu, 384) == (
            "bf16", "precision=auto -> bf16 (CPU with bf16 dot products: avx512_bf16; d_model 384 >= 256)")
        assert dev.precision_choice("auto", cpu, 64) == (
            "fp32", "precision=auto -> fp32 (bf16 dot products (avx512_bf16), but d_model 64 < 256: "
            "bf16 autocast trains slower than fp32 at that width)")
