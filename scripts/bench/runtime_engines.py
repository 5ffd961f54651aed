"""The runtimes section's variants (PyTorch eager fp32, the baseline, first) and what it does with
one: export the ONNX file it runs, say why it cannot run here, open its Predictor, time it and
score it on the test split beside PyTorch fp32. The section itself is :mod:`bench.runtimes`."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import available_cores, call_seconds, per_s, ratio

#: channels_last None: the engine's own choice (bf16 on a CPU: channels_last); export: the
#: ONNX file it runs (OpenVINO reads the ONNX files, as steelseg.deploy runs them)
RUNTIME_VARIANTS = (
    {"name": "torch fp32", "runtime": "torch", "precision": "fp32", "channels_last": False},
    {"name": "torch fp32+cl", "runtime": "torch", "precision": "fp32", "channels_last": True},
    {"name": "torch bf16+cl", "runtime": "torch", "precision": "bf16", "channels_last": None},
    {"name": "onnxruntime fp32", "runtime": "onnxruntime", "precision": "fp32", "export": "fp32"},
    {"name": "onnxruntime int8", "runtime": "onnxruntime", "precision": "int8", "export": "int8"},
    {"name": "openvino fp32", "runtime": "openvino", "precision": "fp32", "export": "fp32"},
    {"name": "openvino bf16", "runtime": "openvino", "precision": "bf16", "export": "fp32"},
    {"name": "openvino int8", "runtime": "openvino", "precision": "int8", "export": "int8"},
)
DICE_KEYS = ("dice_per_image", "iou", "dice_diff", "iou_diff", "dice_ok")

log = logging.getLogger("benchmark")


def runtime_variant(predictor) -> str:
    """The name in :data:`RUNTIME_VARIANTS` of what a Predictor runs on."""
    engine = predictor.engine
    if engine.runtime == "torch":
        return f"torch {engine.precision}" + ("+cl" if engine.channels_last else "")
    return f"{engine.runtime} {engine.precision}"


def runtime_exports(
    args: argparse.Namespace, spec: dict[str, Any], info: dict[str, Any]
) -> dict[str, Path]:
    """The ONNX files the ONNX Runtime and OpenVINO variants run (``steelseg.export``, the
    faster torchscript exporter): fp32, and INT8 where the checkpoint's run has a train
    split to calibrate on. A file that cannot be made is noted in ``info``."""
    from steelseg.export import export
    from steelseg.runtime import installed

    files: dict[str, Path] = {}
    info["export_notes"] = notes = {}
    if not (installed("onnxruntime") or installed("openvino")):
        return files
    for precision in ("fp32", "int8"):
        if precision == "int8" and not spec["trained"]:
            notes[precision] = (
                "INT8 calibrates on the train split of a trained checkpoint's run; pass "
                "--quickstart-ckpt / --resnext-ckpt"
            )
            continue
        out = spec["folder"] / "exports" / f"{precision}.onnx"
        t = time.perf_counter()
        try:
            export(
                spec["checkpoint"], out, "onnx", onnx_exporter="torchscript",
                use_tuned=False, precision=precision,
                calibration_images=args.calibration_images, check=False,
            )  # fmt: skip
        except (ValueError, RuntimeError, OSError) as e:
            notes[precision] = f"the {precision} export failed: {e}"
            log.warning("runtimes: %s", notes[precision])
            continue
        info["export_s"][precision] = round(time.perf_counter() - t, 1)
        files[precision] = out
    return files


def runtime_skip(
    variant: dict[str, Any], files: dict[str, Path], info: dict[str, Any]
) -> str | None:
    """Why ``variant`` does not run here, or None."""
    from steelseg.runtime import cpu_name, installed, native_bf16

    if variant["precision"] == "bf16" and not native_bf16():
        return f"this CPU ({cpu_name()}) has no native bf16 (amx_bf16 / avx512_bf16)"
    if not installed(variant["runtime"]):
        return f"{variant['runtime']} is not installed"
    export = variant.get("export")
    if export and export not in files:
        return info["export_notes"].get(export, f"no {export} export")
    return None


def runtime_predictor(
    args: argparse.Namespace, spec: dict[str, Any], variant: dict[str, Any], files
):
    """The variant's Predictor, with the checkpoint's (tuned) post-processing and flips."""
    from steelseg.model import SteelSegModule
    from steelseg.predict import Predictor

    pp, tta = spec["postprocess"], spec["tta"]
    if variant["runtime"] == "torch":
        cl = variant["channels_last"]
        kwargs = {} if cl is None else {"channels_last": cl}
        module = SteelSegModule.load_from_checkpoint(spec["checkpoint"], **kwargs)
        return Predictor(module, "cpu", pp, tta, precision=variant["precision"])
    return Predictor.from_export(
        files[variant["export"]], variant["runtime"], variant["precision"], postprocess=pp,
        tta=tta, use_tuned=False, threads=args.runtime_threads or available_cores(),
    )  # fmt: skip


def runtime_speed(
    args: argparse.Namespace, predictor, strips: list[np.ndarray], batch: int
) -> dict[str, Any]:
    """Model-only images/s (the network-size batch straight to the engine) and the
    Predictor's images/s on full strips, at ``batch``: of the fastest call (steady on a
    shared machine), and over all calls (``mean_images_per_s``)."""
    seconds = args.runtime_seconds
    x = np.stack([predictor.network_input(s) for s in strips[:batch]])[:, None]
    x = x.astype(predictor.engine.input_dtype or x.dtype, copy=False)
    model = call_seconds(lambda: predictor.engine(x), seconds)
    predictor.batch_size = batch
    strip = call_seconds(  # the engine is warm at this batch already
        lambda: predictor.predict_proba(strips[:batch]), seconds, warmup=False
    )
    return {
        "images_per_s": per_s(batch, min(model)),
        "mean_images_per_s": per_s(batch * len(model), sum(model)),
        "calls": len(model),
        "strip_images_per_s": per_s(batch, min(strip)),
    }


def add_speedups(row: dict[str, Any], rows: list[dict[str, Any]], model: str) -> None:
    """``row``'s speed-ups over the PyTorch eager fp32 row of ``model`` at its batch."""
    name = RUNTIME_VARIANTS[0]["name"]
    base = next(
        r for r in rows if (r["model"], r["variant"], r["batch"]) == (model, name, row["batch"])
    )
    row["speedup"] = ratio(row["images_per_s"], base["images_per_s"])
    row["strip_speedup"] = ratio(row["strip_images_per_s"], base["strip_images_per_s"])


def runtime_accuracy(args: argparse.Namespace, predictor, test) -> dict[str, Any] | None:
    """Per-image Dice and pixel IoU on the labelled test split (None: none to score on)."""
    from steelseg.accuracy import score_predictor

    if test is None:
        return None
    predictor.batch_size = max(args.runtime_batches)
    return score_predictor(predictor, *test)


def runtime_dice(scores: dict[str, Any] | None, ref: dict[str, Any] | None) -> dict[str, Any]:
    """A variant's Dice and IoU columns beside PyTorch fp32's (None: not measured)."""
    from steelseg.accuracy import runtime_check
    from steelseg.runtime import DICE_TOLERANCE

    if scores is None or ref is None:
        return dict.fromkeys(DICE_KEYS)
    check = runtime_check(ref, scores, DICE_TOLERANCE)
    return {
        "dice_per_image": round(check["dice_per_image"], 4),
        "iou": round(check["iou"], 4),
        "dice_diff": round(-check["dice_drop"], 4) + 0.0,  # + 0.0: no -0.0
        "iou_diff": round(-check["iou_drop"], 4) + 0.0,
        "dice_ok": check["ok"],
    }
