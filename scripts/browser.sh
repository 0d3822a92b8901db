#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the browser test (tests/web/test_page.py), unless
# both are already there. Needs root or sudo; a test tool's own browser download does not work offline.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
echo "installing chromium and chromium-driver (apt)" >&2
export DEBIAN_FRONTEND=noninteractive
as_root apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || {
  as_root apt-get update -q >/dev/null
  as_root apt-get install -y -q chromium chromium-driver >/dev/null
}
