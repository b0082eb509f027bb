#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install crunch-dagster with its test and deploy extras, pinned in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-python3}"
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "crunch-dagster needs Python >= 3.11 (found: $("$python_bin" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
# The install is editable: only pyproject.toml (pins, extras, entry points) calls for another one. Its
# hash is stamped in .venv once pip succeeded, so that scripts/test starts in a second when nothing changed.
stamp=".venv/.installed-pyproject-$(sha256sum pyproject.toml | cut -c1-16)"
[ -f "$stamp" ] && exit 0
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,deploy]'
rm -f .venv/.installed-pyproject-*
touch "$stamp"
