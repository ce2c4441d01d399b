"""Compiling qkvlab's C kernels (the decode kernel, the training ops), once per machine.

A source beside this file is compiled with the system C compiler, the one torch.compile also
needs, into ~/.cache/qkvlab/kernels (XDG_CACHE_HOME respected), keyed by the source, the headers
beside it, the sources it #includes, the compiler and the CPU's flags, so a home directory shared by machines of different CPUs holds one build per
CPU. OpenMP comes from the libgomp PyTorch has already loaded, so the kernels and ATen share one
thread pool. Where no compiler works, `load` gives None and callers keep their PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

FLAGS = ("-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp", "-shared", "-fPIC")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "qkvlab" / "kernels"


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build_key(cc: str, source: Path) -> str:
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    try:
        cpu = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        cpu = ""
    text = source.read_text()
    # Every header beside it, and the sources it #includes (decode_step.c builds on the other kernels).
    headers = [h.read_text() for h in sorted(source.parent.glob("*.h"))]
    included = [(source.parent / name).read_text() for name in re.findall(r'#include "([^"]+\.c)"', text)]
    blob = "\n".join([text, *headers, *included, version, " ".join(FLAGS), cpu])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _compile(cc: str, source: Path, out: Path) -> bool:
    """Build into a temporary file beside `out` and rename it, so concurrent processes never load half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, str(source), "-o", tmp, "-lm"], capture_output=True, timeout=120)
        if done.returncode != 0:
            return False
        os.replace(tmp, out)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(name: str) -> Optional[ctypes.CDLL]:
    """The compiled kernels/<name>.c, or None where it cannot be built (no C compiler, no OpenMP)."""
    source = Path(__file__).with_name(f"{name}.c")
    cc = _compiler()
    if cc is None:
        return None
    key = _build_key(cc, source)
    if not key:
        return None
    path = cache_dir() / f"{name}-{key}.so"
    try:
        if not path.exists() and not _compile(cc, source, path):
            return None
        return ctypes.CDLL(str(path))
    except OSError:
        return None
