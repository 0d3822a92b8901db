#!/usr/bin/env bash
# Set up with the dev extras, then lint, type-check and run the whole test suite. The tests start
# what they need themselves (a Prefect server, an S3 server and a search server on 127.0.0.1) and stop
# it after; the browser test uses Debian's chromium (scripts/browser.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "[dev]"
scripts/browser.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
