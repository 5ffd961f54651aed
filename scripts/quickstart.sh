#!/usr/bin/env bash
# The README's first command: install if needed, generate the synthetic data, train the
# CPU-sized quickstart model and test it, then evaluate it at full resolution with an HTML
# report of where it fails. Extra arguments are Hydra overrides for the training run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
start=$(date +%s)
run="outputs/quickstart/$(date +%Y-%m-%d_%H-%M-%S)"
steelseg-train experiment=quickstart hydra.run.dir="$run" "$@"
best=$(ls -t "$run"/checkpoints/best-*.ckpt | head -n 1)
steelseg-eval "$best" --split test --out "$run/eval" --panels 20 --no-progress
echo "steelseg quickstart: run time $(( $(date +%s) - start )) s (install not included)"
echo "  run folder:  $run"
echo "  checkpoint:  $best"
echo "  report:      $run/eval/report.html (open it in a browser)"
