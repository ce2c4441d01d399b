#!/usr/bin/env bash
# Wheels of what `python3 -m qkvlab` needs beyond what a bare GPU machine's image usually holds, for
# a machine that cannot reach a package registry (the device tool's image has Python 3.12, torch,
# triton, numpy, tqdm, PyYAML and packaging, but not hydra-core or omegaconf). Written into .whl/
# (ignored by git); carry that folder, and scripts/bench_gpu.sh installs them into a temporary
# folder when hydra does not import there. Pure-Python packages, so one set serves any platform.
# Usage: scripts/device_wheels.sh [PYTHON_VERSION]   (default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
rm -rf .whl
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" -d .whl "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4"
# omegaconf 2.3 pins antlr4-python3-runtime 4.9.*, which PyPI has as a source archive only: build its wheel here.
python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime>=4.9,<4.10"
ls .whl
