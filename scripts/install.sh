#!/usr/bin/env bash
# Create (or reuse) the virtualenv and install vssm with its pinned dependencies; fail loudly if torch,
# torchvision, timm or numba (the CPU scan kernel) cannot be imported afterwards.
set -euo pipefail
VENV="${1:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# torch and torchvision in one command so pip resolves a matching pair (both are pinned in pyproject.toml too).
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
"$VENV/bin/python" -c "import torch, torchvision, timm, numba; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, numba {numba.__version__}')"
