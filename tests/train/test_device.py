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


def test_auto_precision_is_bf16_only_where_bf16_matmuls_are_native(flags):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    flags("avx2", "fma")
    assert dev.resolve_precision("auto", cpu) == "fp32"
    assert dev.resolve_precision("auto", cuda) == "bf16"
    assert dev.resolve_precision("bf16", cpu) == "bf16"
    flags("avx2", "amx_bf16", "amx_tile")
    assert dev.resolve_precision("auto", cpu) == ("bf16" if torch.backends.mkldnn.is_available() else "fp32")
    flags("avx512_bf16")
    assert dev.resolve_precision("fp32", cpu) == "fp32"

