#!/usr/bin/env bash
# Build the documentation site (MkDocs Material) and serve it on http://127.0.0.1:8001.
# Usage: scripts/docs.sh [serve|build]; `build` only writes the site into site/ (strict: a broken link
# or a warning fails). The command-line reference is generated from `mmindex` itself at build time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "[docs]"
case "${1:-serve}" in
  build) exec .venv/bin/mkdocs build --strict ;;
  serve) exec .venv/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8001 ;;
  *) echo "usage: scripts/docs.sh [serve|build]" >&2; exit 2 ;;
esac
