"""The C kernels build once per source and CPU into the user's cache, and without a working
compiler every caller keeps its PyTorch path."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from qkvlab.model.attention import _rotate, rotate
from qkvlab.model.kernels import cpu_build, cpu_train
from qkvlab.model.rms_norm import RMSNorm


def test_no_working_compiler_gives_none(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", shutil.which("false") or "/nonexistent/cc")
    assert cpu_build.load("train_ops") is None
    assert not list(tmp_path.rglob("*.so*"))  # no half-written build left behind


@pytest.mark.skipif(not cpu_train.available(), reason="no C compiler with OpenMP")
def test_a_build_lands_in_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cpu_build.load("train_ops") is not None
    built = list((tmp_path / "qkvlab" / "kernels").glob("train_ops-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    assert cpu_build.load("train_ops") is not None
    assert built[0].stat().st_mtime_ns == mtime


def test_without_the_kernels_training_ops_keep_their_pytorch_forms(monkeypatch):
    monkeypatch.setattr(cpu_train, "library", lambda: None)
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    x = torch.randn(3, 16, requires_grad=True)
    y = norm(x)
    assert type(y.grad_fn).__name__ == "_RMSNormFnBackward"
    torch.testing.assert_close(y, F.rms_norm(x, (16,), norm.weight, 1e-5))
    y.sum().backward()
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    ang = torch.rand(4, 8)
    torch.testing.assert_close(rotate(q, ang.cos(), ang.sin()), _rotate(q, ang.cos(), ang.sin()), rtol=0, atol=0)


def test_a_header_edit_changes_every_kernels_build_key(tmp_path):
    """The kernels #include vec.h: a build from before a header edit must not be loaded after it."""
    for name in ("train_ops", "shared_kv_decode", "few_rows_linear"):
        (tmp_path / f"{name}.c").write_text(f'#include "vec.h"\nint {name}(void) {{ return 0; }}\n')
    (tmp_path / "vec.h").write_text("#define W 8\n")
    cc = cpu_build._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    before = {name: cpu_build._build_key(cc, tmp_path / f"{name}.c") for name in ("train_ops", "shared_kv_decode", "few_rows_linear")}
    (tmp_path / "vec.h").write_text("#define W 16\n")
    after = {name: cpu_build._build_key(cc, tmp_path / f"{name}.c") for name in before}
    assert all(before[n] and after[n] and before[n] != after[n] for n in before)
