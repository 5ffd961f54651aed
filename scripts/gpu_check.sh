#!/usr/bin/env bash
# The GPU check of issue 24, sized for under 8 minutes on one H100/H200, in one call:
#   - the gpu-marked tests (bf16, channels_last, fused AdamW, pinned memory, bf16 prediction);
#   - the benchmark's GPU sections (scripts/benchmark.py, FPN/resnext50_32x4d at 256x416, batch
#     32 for the ratios and the reference's 8 for its recipe);
#   - two training runs with one seed (steelseg-train trainer=gpu, 4 epochs on 400 synthetic
#     images): what the GPU defaults give, and how far two seeded runs part;
#   - the reference's comparison sweep (experiment=compare_arch_encoder: Unet/FPN x
#     resnext50_32x4d/efficientnet-b3, 2 epochs each, no ImageNet weights) to its summary;
#   - steelseg's loop at batch 8 with model.compile=reduce-overhead (the recipe's projection).
# Each step has a time limit and a failed step does not stop the others; a short table of every
# target, met or missed, is printed last (scripts/gpu_check_table.py).
#
#   bash scripts/gpu_check.sh                      # on a machine with a CUDA GPU, from the repo
#   STEELSEG_GPU_CHECK_CPU=1 bash scripts/gpu_check.sh   # dry run: the same steps, tiny, on a CPU
#   bash scripts/gpu_check.sh --dry-run            # the same
#   STEELSEG_GPU_CHECK_COMPILE= bash scripts/gpu_check.sh   # without the torch.compile step
#   STEELSEG_GPU_CHECK_STEP_S=200 bash scripts/gpu_check.sh # each step's limit (default 300 s)
#   STEELSEG_GPU_CHECK_BUDGET_S=600 bash scripts/gpu_check.sh # all steps (default 460 s)
#   STEELSEG_GPU_CHECK_STEPS=benchmark,compile bash scripts/gpu_check.sh  # some of the steps:
#       tests, train, sweep (side by side: outcomes), benchmark, compile (then alone: timings)
#   STEELSEG_GPU_CHECK_BENCH_ARGS="--sections model,steelseg,inference" bash scripts/gpu_check.sh
#   bash scripts/gpu_check.sh wheels               # where pip reaches PyPI: the packages a bare
#                                                  # PyTorch machine lacks, into .whl/ (carry it)
#
# Python: $STEELSEG_PYTHON, else .venv/bin/python when it runs, else python3. Wheels in .whl/
# (from `wheels`) are installed into a temporary folder first; steelseg itself is used from src/
# (no install). Files go to $STEELSEG_GPU_CHECK_OUT, else $OUT (the device tool's folder), else
# outputs/gpu_check: gpu_check.txt (the table), steps.txt, env.txt, benchmark{,_compile}.json
# and .log, gpu_tests.log, train{1,2}.log, train_metrics{1,2}.json, train_config.yaml,
# sweep.log, sweep_summary.csv and .md. Exit status 1 when a step failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# what a machine with only PyTorch, Lightning, timm, OpenCV and pandas lacks (versions as tested)
WHEELS=(
    segmentation-models-pytorch==0.6.0 hydra-core==1.3.8 omegaconf==2.3.1
    albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5
    annotated-types==0.8.0 typing-inspection==0.4.5 stringzilla==5.3.2 simsimd==6.5.16
    typing-extensions==4.16.0  # pydantic needs >= 4.16, newer than some images hold
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
COMPILE="${STEELSEG_GPU_CHECK_COMPILE-reduce-overhead}"  # empty: no compile rows
STEP_S="${STEELSEG_GPU_CHECK_STEP_S:-300}"  # each step's time limit; the rest still run
BUDGET_S="${STEELSEG_GPU_CHECK_BUDGET_S:-460}"  # all steps together: the last ones get what is left
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET_S))
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

# the synthetic set shared by the training runs and the sweep (built once, under a lock)
if [[ $DRY == 1 ]]; then
    BENCH=(--device cpu --smoke --profile)
    BENCH_COMPILE=(--device cpu --smoke --batch 4 --reference-batch 4)
    NET=(encoder=mobilenetv3_small model.in_channels=1 data.height=64 data.width=320
        data.batch_size=4 data.num_workers=0 +trainer.limit_train_batches=2)
    DATA=(data.synthetic.n_images=30)
    TRAIN=(trainer=cpu "${NET[@]}" trainer.max_epochs=1)
    SWEEP=("${NET[@]}" trainer.accelerator=cpu trainer.max_epochs=1
        "hydra.sweeper.params.encoder=mobilenetv3_small")
else
    python_has_cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
    if [[ $python_has_cuda != 1 ]]; then
        echo "gpu_check: no CUDA GPU visible to $PY; for a CPU dry run set STEELSEG_GPU_CHECK_CPU=1" >&2
        exit 2
    fi
    # batch 32 for the ratios, 8 for the reference recipe; 320 images: 256 train, 32 val, 32 test;
    # --profile: where the time of a step goes in (a) and (b), when b/a falls short
    BENCH=(--device cuda --no-tiny --batch 32 --reference-batch 8 --images 320 --epochs 3
        --memory-images 500 --profile)
    # torch.compile only where the issue asks for it: steelseg's loop at the reference's batch
    BENCH_COMPILE=(--device cuda --no-tiny --batch 8 --reference-batch 8 --images 320 --epochs 3)
    DATA=(data.synthetic.n_images=400)  # 320 train, 40 val, 40 test
    TRAIN=(trainer=gpu trainer.max_epochs=4)  # the reference's network and size, GPU defaults
    # the reference's Unet/FPN x resnext50_32x4d/efficientnet-b3 comparison, 2 epochs each
    SWEEP=(trainer.max_epochs=2)
fi
# more benchmark flags (later flags win), e.g. --sections model,steelseg,inference
read -r -a MORE <<<"${STEELSEG_GPU_CHECK_BENCH_ARGS:-}"
BENCH+=("${MORE[@]}")
ALL_STEPS=tests,train,sweep,benchmark,compile
STEPS="${STEELSEG_GPU_CHECK_STEPS:-$ALL_STEPS}"
for step in ${STEPS//,/ }; do
    if [[ ",$ALL_STEPS," != *",$step,"* ]]; then
        echo "gpu_check: STEELSEG_GPU_CHECK_STEPS: no step '$step'; choose from $ALL_STEPS" >&2
        exit 2
    fi
done
want() { [[ ",$STEPS," == *",$1,"* ]]; }
COMMON=(model.encoder_weights=null "${DATA[@]}" data.synthetic.n_test=0 paths.data_dir="$WORK/data"
    callbacks.progress_bar=null +trainer.enable_progress_bar=false)

# run_step NAME LOG COMMAND...: run under the step limit, log to LOG, note the outcome in steps.txt;
# a failed step does not stop the others
run_step() {
    local name=$1 log=$2 start rc=0 limit=$STEP_S left=$((DEADLINE - $(date +%s)))
    shift 2
    ((left < limit)) && limit=$left
    if ((limit < 10)); then  # the budget is spent: say so, do not start it
        echo "the check's budget of ${BUDGET_S} s was spent before this step" >"$log"
        echo "$name skipped 0" >>"$OUTDIR/steps.txt"
        echo "gpu_check: $name skipped: the budget of ${BUDGET_S} s is spent" >&2
        return 0
    fi
    echo "== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" >"$log" 2>&1 || rc=$?
    echo "$name $rc $(($(date +%s) - start))" >>"$OUTDIR/steps.txt"
    if [[ $rc != 0 ]]; then
        tail -15 "$log"
        echo "gpu_check: $name failed (exit $rc$([[ $rc == 124 ]] && echo ", over ${limit} s")); see $log" >&2
    fi
    return 0
}
: >"$OUTDIR/steps.txt"

# 1. side by side, as their numbers are outcomes and accuracies, not timings: the GPU-marked
# tests (tiny fits checking bf16, channels_last, fused AdamW and pinned memory; bf16 prediction
# against CPU fp32; they skip, with a reason, without CUDA), two training runs with one seed (how
# far they part on this device) and the comparison sweep
if want tests; then
    run_step "GPU tests" "$OUTDIR/gpu_tests.log" "$PY" -m pytest -q -p no:cacheprovider \
        -m "gpu and not slow" tests/test_perf_defaults.py tests/test_predict.py &
fi
if want train; then
    for run in 1 2; do
        run_step "training run $run" "$OUTDIR/train$run.log" "$PY" -m steelseg.cli.train \
            "${TRAIN[@]}" "${COMMON[@]}" hydra.run.dir="$WORK/train$run" &
    done
fi
if want sweep; then
    run_step "sweep" "$OUTDIR/sweep.log" "$PY" -m steelseg.cli.train -m \
        experiment=compare_arch_encoder data=synthetic data.split_file=null "${SWEEP[@]}" \
        "${COMMON[@]}" hydra.sweep.dir="$WORK/sweep" &
fi
wait
for run in 1 2; do
    cp "$WORK/train$run/metrics.json" "$OUTDIR/train_metrics$run.json" 2>/dev/null || true
done
cp "$WORK/train1/config.yaml" "$OUTDIR/train_config.yaml" 2>/dev/null || true
for f in csv md; do cp "$WORK/sweep/summary.$f" "$OUTDIR/sweep_summary.$f" 2>/dev/null || true; done

# 2. alone on the machine, as these are timings
if want benchmark; then
    run_step benchmark "$OUTDIR/benchmark.log" "$PY" scripts/benchmark.py "${BENCH[@]}" \
        --workdir "$WORK/bench" --json "$OUTDIR/benchmark.json"
fi
if want compile && [[ -n $COMPILE ]]; then
    run_step "benchmark compile=$COMPILE" "$OUTDIR/benchmark_compile.log" "$PY" scripts/benchmark.py \
        "${BENCH_COMPILE[@]}" --sections steelseg --compile "$COMPILE" --workdir "$WORK/bench" \
        --json "$OUTDIR/benchmark_compile.json"
fi

"$PY" scripts/gpu_check_table.py "$OUTDIR" "$(($(date +%s) - T0))" | tee "$OUTDIR/gpu_check.txt"
