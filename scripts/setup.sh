#!/usr/bin/env bash
# Create .venv and install mmindex into it (editable). Usage: scripts/setup.sh [EXTRAS], e.g. "[dev]".
# torch is installed first, on its own, so the build fits the machine: set MMINDEX_TORCH to choose,
# e.g. MMINDEX_TORCH="torch --index-url https://download.pytorch.org/whl/cpu" (default torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "mmindex needs Python >= 3.10" >&2; exit 2; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
.venv/bin/python -c "import torch" 2>/dev/null || pip install ${MMINDEX_TORCH:-torch==2.13.0}
pip install -e ".${1:-}"
