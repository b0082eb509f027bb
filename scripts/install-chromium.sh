#!/usr/bin/env bash
# Debian's chromium for the browser tests (Playwright drives it; it downloads no browser of its own).
# Idempotent and quiet: nothing happens when chromium is already there. Needs root (CI runs as root).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium is missing and this is not root: install it (apt-get install chromium) for the browser tests" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
