#!/usr/bin/env bash
# The README's first command: install if needed, generate the synthetic data, train the
# CPU-sized quickstart model, test it and print the metrics. Extra arguments are Hydra overrides.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
start=$(date +%s)
steelseg-train experiment=quickstart "$@"
echo "steelseg quickstart: run time $(( $(date +%s) - start )) s (install not included)"
