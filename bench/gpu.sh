#!/usr/bin/env bash
# The GPU path's figures in one command, on a machine with an NVIDIA GPU (under 8 minutes):
#
#     bash bench/gpu.sh [bench/gpu.py options]
#
# Uses $PYTHON (default: python3) if its torch already sees a CUDA device; otherwise makes
# .venv-gpu with a CUDA torch from PyPI. Installs mmindex with the `gpu` extra (nvImageCodec) when
# the registry can be reached; without it the GPU decode figure is skipped and the rest still runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    "$PYTHON" -m venv .venv-gpu
    PYTHON=.venv-gpu/bin/python
    "$PYTHON" -m pip install -q --upgrade pip
    "$PYTHON" -m pip install -q torch
fi
"$PYTHON" -m pip install -q -e . || "$PYTHON" -m pip install -q --no-deps -e .
"$PYTHON" -m pip install -q -e ".[gpu]" || echo "nvImageCodec not installed: GPU decoding is not measured"
exec timeout 450 "$PYTHON" bench/gpu.py "$@"
