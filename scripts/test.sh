#!/usr/bin/env bash
# The README's second command: install if needed, then the fast test suite (no slow, no GPU
# tests) on every core (pytest-xdist, a test module per process so its fixtures are made once;
# each test process runs torch on one thread). Extra
# arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow ones or `-n 0` for
# one process; the 15 slowest tests are always listed at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
if [ "$#" -eq 0 ]; then set -- -m "not slow and not gpu"; fi
exec python -m pytest -n auto --dist loadscope --durations=15 "$@"
