#!/usr/bin/env bash
# Create .venv and install mmindex into it (editable). Usage: scripts/setup.sh [EXTRAS], e.g. "[dev]".
# torch is installed first, on its own, so the build fits the machine: set MMINDEX_TORCH to choose,
# e.g. MMINDEX_TORCH="torch --index-url https://download.pytorch.org/whl/cpu" (default torch==2.13.0).
# A second run with an unchanged pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "mmindex needs Python >= 3.10" >&2; exit 2; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
extras=${1:-}
stamp=".venv/.mmindex-installed$(echo "$extras" | tr -dc 'a-z')"
wanted=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
log=.venv/setup.log
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" >>"$log" 2>&1; }
: >"$log"
echo "setting up .venv (log: $log)" >&2
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install ${MMINDEX_TORCH:-torch==2.13.0} || { cat "$log" >&2; exit 1; }
fi
pip install -e ".${extras}" || { cat "$log" >&2; exit 1; }
echo "$wanted" >"$stamp"
