"""Benchmark steelseg's training and inference against the model-only ceiling and a
reference-style pipeline (the original task's), side by side in one run, on a CPU or a CUDA GPU.

    python scripts/benchmark.py                          # CPU: tiny model; GPU: FPN/resnext50_32x4d
    python scripts/benchmark.py --json bench.json        # also write every number as JSON
    python scripts/benchmark.py --sections data          # only the data path, images/s per core
    python scripts/benchmark.py --compile reduce-overhead --batch 8   # add torch.compile runs
    python scripts/benchmark.py --sections runtimes --quickstart-ckpt RUN/checkpoints/last.ckpt
    python scripts/benchmark.py --sections serve --serve-model RUN/checkpoints/last.ckpt

Sections (``--sections``, comma-separated; default all but ``serve``, on a GPU also not
``runtimes``):

* ``model``: (a) the model-only training-step ceiling: random inputs already on the device,
  AdamW, Dice loss; on a GPU fp32 (framework defaults) and bf16 + channels_last + fused AdamW.
* ``steelseg``: (b) steelseg's real loop: synthetic JPEGs on disk, prepared + uint8 cache, the
  composed ``train`` config, SteelDataModule, SteelSegModule and a Lightning Trainer.
* ``reference``: (c) a reference-style loop: fp32, per-sample cv2 JPEG decode + per-run RLE
  decode + albumentations Resize/flip/Normalize in a DataLoader, a plain PyTorch loop with a
  per-step ``loss.item()``.
* ``inference``: (d) full 256x1600 images: the model alone against ``steelseg.predict.Predictor``.
* ``rle``: (e) RLE decode/encode against the per-run Python loop (scripts/bench_rle.py).
* ``data``: the data path alone, one process on one core, at 256x416: the uint8 cache against
  decoding the JPEG (target: cached >= 3x).
* ``memory``: host memory of one training epoch over a larger set (``--memory-images``) against
  the size of its uint8 cache (memory-mapped, so the bound is the cache plus a constant).
* ``runtimes``: (r) CPU inference on full 256x1600 strips at ``--runtime-batches`` (1 and 8)
  for FPN/resnext50_32x4d and the quickstart model (``--runtime-models``), on every runtime and
  precision here (PyTorch eager fp32 (the baseline), fp32 channels_last, bf16; ONNX Runtime
  fp32 and INT8; OpenVINO fp32, bf16 and INT8): model-only images/s and the Predictor's on full
  strips (of the fastest call in ``--runtime-seconds``: steady on a shared machine), each as a
  ratio to PyTorch eager fp32, and per-image Dice and IoU on the test split beside fp32's. The
  accuracy (and INT8, calibrated on the run's train split) needs a trained checkpoint in its
  steelseg-train run folder (``--quickstart-ckpt``, ``--resnext-ckpt``); without one the
  network is untrained and the accuracy is not measured. Also what
  ``steelseg.deploy.load_predictor`` picks (``--runtime auto``) and its ratio, and
  ``steelseg-predict`` over a folder of ``--runtime-images`` JPEG strips against its model-only
  images/s. Every runtime runs on ``--runtime-threads`` (default: every core). The checkpoints
  are copied into the work folder first: the automatic choice is measured afresh and nothing
  is written beside them. ``--smoke``: the quickstart-shaped network only, batches 1 and 2. A
  default section on a CPU; on a GPU only when asked for (it measures the CPU).
* ``serve``: (s) ``steelseg-serve`` on this machine under ``--serve-clients`` (1 and 8) clients
  posting 256x1600 JPEG strips over loopback (``--serve-requests`` timed each): images/s and
  its fraction of the same engine's model-only images/s at ``--max-batch`` 8 (target >= 0.8
  at 8 clients), p50/p99 latency, the engine batches the server formed (``/metrics``). The
  model: ``--serve-model`` (a checkpoint or an export), else ``--quickstart-ckpt``, else an
  untrained quickstart network. Only when asked for: it starts Ray and a server (seconds to
  a minute), needs ``pip install 'steelseg[serve]'``, and measures a deployment.

The reference recipe's wall time (800 training images x 30 epochs at batch 8, 100 validation
images every epoch) is projected from (b) and (c) at ``--reference-batch``. The table is printed
last. ``--sections seed`` and ``--seed-batch`` are deprecated aliases of ``--sections reference``
and ``--reference-batch``.

Each section is a module of scripts/bench/ (named for its JSON key; see bench/__init__.py), all
timed with one helper (bench/measure.py); this file parses the flags, runs them and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

SCRIPTS = str(Path(__file__).resolve().parent)
if SCRIPTS not in sys.path:  # run from anywhere, or loaded by path: bench/ lives beside this file
    sys.path.insert(0, SCRIPTS)

from bench.options import CPU_SECTIONS, OPT_IN_SECTIONS, RUNTIME_MODELS, SECTIONS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument(
        "--tiny",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tiny model at 64x320 (default on CPU); --no-tiny: the reference's FPN/resnext50",
    )
    p.add_argument("--smoke", action="store_true", help="a few steps of everything (tests)")
    p.add_argument(
        "--sections",
        help=f"of {','.join(SECTIONS)} (default: all but {','.join(OPT_IN_SECTIONS)}; on a GPU "
        f"also not {','.join(CPU_SECTIONS)})",
    )
    p.add_argument("--json", type=Path, help="write every number to this JSON file")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile a few steps of (a) and (b) at --batch with torch.profiler: host and "
        "GPU time, kernel launches and the busiest host operations per step (JSON profile)",
    )
    p.add_argument("--workdir", type=Path, help="keep data and runs here (default: a temp dir)")
    p.add_argument("--arch", help="smp architecture (steelseg.model.ARCHS)")
    p.add_argument("--encoder", help="smp encoder or tu-<timm model>")
    p.add_argument("--in-channels", type=int, choices=(1, 3))
    p.add_argument("--batch", type=int, help="batch of the ratios (GPU default 32)")
    p.add_argument(
        "--reference-batch",
        "--seed-batch",  # deprecated alias
        dest="reference_batch",
        type=int,
        help="batch of the reference-recipe projection (8); --seed-batch: deprecated alias",
    )
    p.add_argument("--height", type=int, help="training height (multiple of 32)")
    p.add_argument("--width", type=int, help="training width (multiple of 32)")
    p.add_argument("--images", type=int, help="synthetic images for (b), (c), data, rle")
    p.add_argument("--epochs", type=int, help="epochs of (b) and (c); the first is warm-up")
    p.add_argument("--steps", type=int, help="timed steps of (a)")
    p.add_argument("--warmup", type=int, help="untimed steps of (a) first")
    p.add_argument("--workers", type=int, help="DataLoader workers of (b) and (c)")
    p.add_argument(
        "--compile", help="also run (a) and (b) with model.compile=MODE (e.g. reduce-overhead)"
    )
    p.add_argument("--infer-batch", type=int)
    p.add_argument("--infer-steps", type=int)
    p.add_argument("--memory-images", type=int, help="synthetic images of the memory check")
    p.add_argument("--data-samples", type=int, help="samples timed per data path")
    p.add_argument("--rle-rows", type=int)
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: 1 with --tiny on a CPU)"
    )
    p.add_argument(
        "--quickstart-ckpt",
        type=Path,
        help="runtimes: a trained steelseg-train experiment=quickstart checkpoint in its run "
        "folder (accuracy on its test split, INT8); default: an untrained network",
    )
    p.add_argument(
        "--resnext-ckpt",
        type=Path,
        help="runtimes: a trained FPN/resnext50_32x4d checkpoint in its run folder; default: "
        "an untrained network",
    )
    p.add_argument(
        "--runtime-models",
        help=f"runtimes: of {','.join(RUNTIME_MODELS)} (default both; --smoke: quickstart)",
    )
    p.add_argument("--runtime-batches", help="runtimes: batch sizes (default 1,8; --smoke 1,2)")
    p.add_argument("--runtime-images", type=int, help="runtimes: JPEGs of the predict folder")
    p.add_argument(
        "--runtime-seconds", type=float, help="runtimes: least seconds timed per measurement"
    )
    p.add_argument(
        "--runtime-threads", type=int, help="runtimes: threads of every runtime (every core)"
    )
    p.add_argument(
        "--calibration-images", type=int, help="runtimes: train images INT8 calibrates on (64)"
    )
    p.add_argument(
        "--serve-model",
        type=Path,
        help="serve: the model steelseg-serve runs, a checkpoint or an .onnx/.xml export "
        "(default: --quickstart-ckpt, else an untrained quickstart network)",
    )
    p.add_argument("--serve-clients", help="serve: client counts (default 1,8)")
    p.add_argument(
        "--serve-requests", type=int, help="serve: timed requests per client count (200)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    from bench.runner import run  # torch and the sections: only once the flags parse
    from bench.table import table

    try:
        results = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        from steelseg.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2, default=str))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
