#!/usr/bin/env bash
# Create or reuse .venv at the repo root and install steelseg (editable) with its dev tools.
# Sourced by the other scripts; idempotent: reinstalls only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STEELSEG_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -c 'import sys; assert sys.version_info >= (3, 10), "steelseg needs Python >= 3.10"'
  echo "steelseg: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.steelseg-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "steelseg: installing into $VENV (first time: a few minutes, torch is large)" >&2
  start=$(date +%s)
  # (the grep drops pip's notes about local index folders some machines are configured with)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[dev]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$WANT" > "$STAMP"
  echo "steelseg: installed in $(( $(date +%s) - start )) s" >&2
fi
export PATH="$VENV/bin:$PATH"
