#!/usr/bin/env bash
# The GPU check of issue 6, sized for under 4 minutes on one H100/H200: the benchmark's GPU
# sections (scripts/benchmark.py, FPN/resnext50_32x4d at 256x416, batch 32 and the reference's 8)
# and one short real training run on synthetic data with the GPU defaults (steelseg-train
# trainer=gpu: bf16, channels_last, fused AdamW, pinned memory). A short table is printed last.
#
#   bash scripts/gpu_check.sh                      # on a machine with a CUDA GPU, from the repo
#   STEELSEG_GPU_CHECK_CPU=1 bash scripts/gpu_check.sh   # dry run: the same steps, tiny, on a CPU
#   bash scripts/gpu_check.sh --dry-run            # the same
#   STEELSEG_GPU_CHECK_COMPILE=reduce-overhead bash scripts/gpu_check.sh   # + torch.compile rows
#   bash scripts/gpu_check.sh wheels               # where pip reaches PyPI: the packages a bare
#                                                  # PyTorch machine lacks, into .whl/ (carry it)
#
# Python: $STEELSEG_PYTHON, else .venv/bin/python when it runs, else python3. Wheels in .whl/ (from `wheels`) are
# installed into a temporary folder first; steelseg itself is used from src/ (no install).
# Files go to $STEELSEG_GPU_CHECK_OUT, else $OUT (the device tool's folder), else
# outputs/gpu_check: gpu_check.txt (table), benchmark.json, benchmark.txt, benchmark.log,
# train_metrics.json, train.log, gpu_tests.log, env.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

# what a machine with only PyTorch, Lightning, timm, OpenCV and pandas lacks (versions as tested)
WHEELS=(
    segmentation-models-pytorch==0.6.0 hydra-core==1.3.8 omegaconf==2.3.1
    albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5
    annotated-types==0.8.0 typing-inspection==0.4.5 stringzilla==5.3.2 simsimd==6.5.16
)

if [[ "${1:-}" == "wheels" ]]; then
    mkdir -p .whl
    grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
    plats=()
    for p in 17 24 28 31 34; do plats+=(--platform "manylinux_2_${p}_x86_64"); done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" \
        --implementation cp "${plats[@]}" --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    # antlr4 (hydra's parser) is published as source only: build its pure-Python wheel here
    python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
    ls -1 .whl
    echo "now run on the GPU machine, carrying .whl: bash scripts/gpu_check.sh"
    exit 0
fi

DRY=0
[[ "${1:-}" == "--dry-run" || "${STEELSEG_GPU_CHECK_CPU:-0}" == "1" ]] && DRY=1
COMPILE="${STEELSEG_GPU_CHECK_COMPILE:-}"
OUTDIR="${STEELSEG_GPU_CHECK_OUT:-${OUT:-outputs/gpu_check}}"
mkdir -p "$OUTDIR"
WORK="$(mktemp -d -t steelseg-gpu-check-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

PY="${STEELSEG_PYTHON:-python3}"
if [[ -z ${STEELSEG_PYTHON:-} && -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PY=.venv/bin/python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
missing() {
    "$PY" -c 'import importlib.util as u
names = ("torch", "pytorch_lightning", "segmentation_models_pytorch", "hydra", "albumentations",
         "cv2", "pandas", "steelseg")
print(" ".join(n for n in names if u.find_spec(n) is None))'
}
if [[ -n "$(missing)" ]] && compgen -G ".whl/*.whl" >/dev/null; then  # a bare PyTorch machine
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" .whl/*.whl || echo "gpu_check: .whl/ does not install here" >&2
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
if [[ -n "$(missing)" ]]; then
    echo "gpu_check: $PY lacks Python packages: $(missing); run 'bash scripts/gpu_check.sh" \
        "wheels' where pip reaches PyPI and carry .whl/ to this machine" >&2
    exit 2
fi

{
    echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0])') ($PY)"
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} | tee "$OUTDIR/env.txt"

if [[ $DRY == 1 ]]; then
    BENCH=(--device cpu --smoke)
    TRAIN=(trainer=cpu encoder=mobilenetv3_small model.in_channels=1
        data.synthetic.n_images=30 data.height=64 data.width=320 data.batch_size=4
        data.num_workers=0 trainer.max_epochs=1 +trainer.limit_train_batches=2)
else
    python_has_cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
    if [[ $python_has_cuda != 1 ]]; then
        echo "gpu_check: no CUDA GPU visible to $PY; for a CPU dry run set STEELSEG_GPU_CHECK_CPU=1" >&2
        exit 2
    fi
    # batch 32 for the ratios, 8 for the reference recipe; 320 images: 256 train, 32 val, 32 test
    BENCH=(--device cuda --no-tiny --batch 32 --reference-batch 8 --images 320 --epochs 3
        --memory-images 500)
    # ~1 minute: 400 synthetic images (320 train), 4 epochs, the reference's network and size
    TRAIN=(trainer=gpu data.synthetic.n_images=400 trainer.max_epochs=4)
fi
if [[ -n $COMPILE ]]; then
    BENCH+=(--compile "$COMPILE")
    TRAIN+=(model.compile="$COMPILE")
fi

echo "== benchmark: ${BENCH[*]}"
"$PY" scripts/benchmark.py "${BENCH[@]}" --workdir "$WORK/bench" --json "$OUTDIR/benchmark.json" \
    2>"$OUTDIR/benchmark.log" | tee "$OUTDIR/benchmark.txt" ||
    { tail -30 "$OUTDIR/benchmark.log"; echo "gpu_check: the benchmark failed" >&2; exit 1; }

echo "== training: steelseg-train ${TRAIN[*]}"
start=$(date +%s)
"$PY" -m steelseg.cli.train "${TRAIN[@]}" model.encoder_weights=null data.synthetic.n_test=0 \
    paths.data_dir="$WORK/data" hydra.run.dir="$WORK/train" \
    callbacks.progress_bar=null +trainer.enable_progress_bar=false >"$OUTDIR/train.log" 2>&1 ||
    { tail -30 "$OUTDIR/train.log"; echo "gpu_check: the training run failed" >&2; exit 1; }
cp "$WORK/train/metrics.json" "$OUTDIR/train_metrics.json"
train_wall=$(($(date +%s) - start))
echo "training wall time: $train_wall s" >>"$OUTDIR/train.log"

# the GPU-marked tests of the defaults (seconds: tiny fits checking bf16, channels_last, fused
# AdamW and pinned memory); they skip, with a reason, without CUDA
echo "== GPU tests: pytest -m 'gpu and not slow' tests/test_perf_defaults.py"
tests_rc=0
"$PY" -m pytest -q -p no:cacheprovider -m "gpu and not slow" tests/test_perf_defaults.py \
    >"$OUTDIR/gpu_tests.log" 2>&1 || tests_rc=$?
tests_line=$(tail -1 "$OUTDIR/gpu_tests.log")

"$PY" - "$OUTDIR" "$train_wall" "$WORK/train/config.yaml" "$tests_line" <<'EOF' | tee "$OUTDIR/gpu_check.txt"
"""The short table: the benchmark's headline numbers and the training run's."""
import json, sys
from pathlib import Path

out, train_wall = Path(sys.argv[1]), sys.argv[2]
b = json.loads((out / "benchmark.json").read_text())
t = json.loads((out / "train_metrics.json").read_text())
cfg = Path(sys.argv[3]).read_text()
m = t["metrics"]
rows = [("device", b["meta"]["device_name"], "")]

def fmt(v, unit=""):
    if isinstance(v, float):
        return (f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}") + unit
    return "-" if v is None else f"{v}{unit}"

for r in b.get("model_step", []):
    rows.append((f"(a) model-only step, {r['variant']}, batch {r['batch']}", fmt(r["images_per_s"], " img/s"), ""))
for r in b.get("steelseg_loop", []):
    c = f" compile={r['compile']}" if r["compile"] else ""
    rows.append((f"(b) steelseg loop, batch {r['batch']}{c}", fmt(r["train_images_per_s"], " img/s"), r["precision"]))
for r in b.get("reference_loop", []):
    rows.append((f"(c) reference-style loop, batch {r['batch']}", fmt(r["train_images_per_s"], " img/s"), "fp32"))
inf = b.get("inference") or {}
for k, r in inf.get("model_only", {}).items():
    rows.append((f"(d) inference 256x1600 model only, {k}", fmt(r["images_per_s"], " img/s"), ""))
if inf.get("predictor"):
    rows.append(("(d) inference 256x1600 Predictor", fmt(inf["predictor"]["images_per_s"], " img/s"), ""))
targets = {"b_over_a": ">= 0.9", "b_over_c": ">= 1.6", "predictor_over_model": ">= 0.9", "cached_over_jpeg": ">= 3"}
for k, target in targets.items():
    if k in b.get("ratios", {}):
        rows.append((f"ratio {k.replace('_over_', '/')}", fmt(b["ratios"][k]), f"target {target}"))
for k, v in b.get("reference_recipe", {}).items():
    if k.endswith("_s"):
        rows.append((f"reference recipe projected, {k[:-2]}", fmt(v, " s"), "target <= 60 s" if k == "steelseg_s" else ""))
mem = b.get("memory") or {}
if mem:
    rows.append(("memory: RSS growth / train cache", f"{mem['rss_growth_mb']} / {mem['train_cache_mb']} MB", f"heap +{mem['anon_growth_mb']} MB"))
rows.append(("peak host RSS / GPU memory", fmt(b["peak"]["host_rss_mb"], " MB"), fmt(b["peak"]["gpu_mb"], " MB")))
precision = next((l.split(":", 1)[1].strip() for l in cfg.splitlines() if l.strip().startswith("precision:")), "?")
rows.append(("training run: precision", precision, ""))
rows.append(("training run: epochs, fit seconds", f"{m['epochs']:.0f}, {m['fit_seconds']} s", f"wall {train_wall} s"))
rows.append(("training run: images/s", fmt(m["train_images_per_s"], " img/s"), ""))
rows.append(("training run: val IoU / test IoU", f"{m.get('val/iou', float('nan')):.3f} / {m.get('test/iou', float('nan')):.3f}", ""))
rows.append(("GPU tests (test_perf_defaults.py -m gpu)", sys.argv[4][:40], ""))
print("== gpu_check summary")
for name, value, note in rows:
    print(f"{name:48s} {value:>20s}  {note}")
EOF
exit "$tests_rc"
