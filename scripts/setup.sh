#!/usr/bin/env bash
# Install qkvlab into the active Python environment.
#   scripts/setup.sh          the runner
#   scripts/setup.sh test     the runner and the test tools
# Torch goes first and only when missing, so an installed (CUDA) build is kept.
# TORCH_SPEC picks the build for a fresh environment (default: torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ] && [ -z "${CI:-}" ]; then
  echo "qkvlab setup: no virtual environment is active; run: python3 -m venv .venv && . .venv/bin/activate" >&2
  exit 2
fi
python -m pip install -q --upgrade pip
if python -c "import torch" 2>/dev/null; then
  echo "qkvlab setup: keeping torch $(python -c 'import torch; print(torch.__version__)')"
else
  python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
python -m pip install -q -e ".${extras}"
echo "qkvlab setup: done ($(python -c 'import torch; print("torch", torch.__version__)'))"
