#!/usr/bin/env bash
# Set up, then run the main job on embedded defaults: index a generated sample corpus into a local
# LanceDB directory (./mmindex-demo) and run a few queries. Offline; no server to install.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/mmindex demo "$@"
