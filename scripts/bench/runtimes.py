"""Section ``runtimes``, (r): CPU inference on full 256x1600 strips at ``--runtime-batches`` for
the ``--runtime-models`` (:mod:`bench.runtime_models`) on every runtime and precision here
(:data:`bench.runtime_engines.RUNTIME_VARIANTS`): model-only images/s and the Predictor's on
full strips, each as a ratio to PyTorch eager fp32, and per-image Dice and IoU on the test split
beside fp32's (a trained checkpoint only). Then what ``steelseg.deploy.load_predictor`` picks
(``--runtime auto``; targets in :data:`bench.options.RUNTIME_TARGETS`) and ``steelseg-predict``
over a folder of strips (target: >= 0.9 of its model-only images/s). Every runtime runs on
``--runtime-threads`` (default: every core). JSON ``runtimes``."""

from __future__ import annotations

import gc
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.context import FULL_SIZE, Bench
from bench.measure import available_cores, cores, ratio
from bench.runtime_engines import (
    DICE_KEYS,
    RUNTIME_VARIANTS,
    add_speedups,
    runtime_accuracy,
    runtime_dice,
    runtime_exports,
    runtime_predictor,
    runtime_skip,
    runtime_speed,
    runtime_variant,
)
from bench.runtime_models import runtime_models

log = logging.getLogger("benchmark")


def run(bench: Bench) -> None:
    from steelseg.runtime import DICE_TOLERANCE, cpu_name, native_bf16, native_int8, versions

    a = bench.args
    threads = a.runtime_threads or available_cores()
    out: dict[str, Any] = {
        "cpu": cpu_name(),
        "native_bf16": native_bf16(),
        "native_int8": native_int8(),
        "versions": versions(),
        "threads": threads,
        "size": list(FULL_SIZE),
        "batches": a.runtime_batches,
        "tolerance": DICE_TOLERANCE,
        "rows": [],
        "models": {},
        "what": "images/s of the fastest call after a warm-up one (mean_images_per_s: over "
        "all calls): model only = the network-size uint8 batch straight to the engine; "
        "strip = Predictor.predict_proba on random 256x1600 strips (resize to the input "
        "size, network, sigmoid, resize back); speedup = over PyTorch eager fp32 at the same "
        "batch; dice_diff / iou_diff = the variant's per-image Dice / pixel IoU on the test "
        "split minus PyTorch fp32's",
    }
    rng = np.random.default_rng(0)
    strips = list(rng.integers(0, 256, (max(a.runtime_batches), *FULL_SIZE), dtype=np.uint8))
    folder = bench.work / "runtimes" / "strips"
    shutil.rmtree(folder, ignore_errors=True)
    strip_folder(folder, a.runtime_images)
    with cores(threads):
        for spec in runtime_models(bench):
            info, rows = runtime_model(bench, spec, strips, folder)
            out["models"][spec["name"]] = info
            out["rows"] += rows
            gc.collect()
    bench.results["runtimes"] = out


def strip_folder(folder: Path, n: int) -> Path:
    """``n`` synthetic full-strip JPEGs (256x1600, quality 95 as Kaggle's) in a plain folder."""
    from steelseg import synth

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image, _ = synth.make_image(rng)
        cv2.imwrite(str(folder / f"strip{i:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def runtime_describe(hp: dict[str, Any]) -> str:
    size = hp.get("input_size")
    size = f"{size[0]}x{size[1]}" if size else "the image's size"
    return f"{hp['arch']}/{hp['encoder_name']} in_channels={hp['in_channels']}, input {size}"


# ----------------------------------------------------------------------------- one model
def runtime_model(
    bench: Bench, spec: dict[str, Any], strips: list[np.ndarray], folder: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One model on every variant here, then the automatic choice and steelseg-predict."""
    from steelseg.labelled import labelled_sources
    from steelseg.postprocess import load_tuned

    a, ckpt = bench.args, spec["checkpoint"]
    tuned = load_tuned(ckpt)
    spec["postprocess"], spec["tta"] = tuned if tuned else (None, ())
    test = labelled_sources(ckpt, "test", None, None) if spec["trained"] else None
    info: dict[str, Any] = {
        "checkpoint": str(spec["given"]) if spec["given"] else None,
        "trained": spec["trained"],
        "tta": list(spec["tta"]),
        "test_images": len(test[0]) if test else None,
        "skipped": {},
        "export_s": {},
    }
    if test is None:
        info["accuracy_note"] = (
            "not measured: an untrained network (pass --quickstart-ckpt / --resnext-ckpt: "
            "a trained checkpoint in its run folder)"
            if not spec["trained"]
            else "not measured: no labelled test split found for the checkpoint's run"
        )
    rows: list[dict[str, Any]] = []
    with bench.peaks.section(info):
        files = runtime_exports(a, spec, info)
        ref = None
        for variant in RUNTIME_VARIANTS:
            reason = runtime_skip(variant, files, info)
            if reason:
                info["skipped"][variant["name"]] = reason
                continue
            try:
                predictor = runtime_predictor(a, spec, variant, files)
            except (ValueError, RuntimeError) as e:  # a runtime that cannot run it here
                info["skipped"][variant["name"]] = f"could not open it: {e}"
                continue
            if predictor.module is not None:
                info.setdefault("model", runtime_describe(predictor.module.hparams))
            scores = runtime_accuracy(a, predictor, test)
            ref = ref or scores  # PyTorch eager fp32 comes first
            for batch in a.runtime_batches:
                row = {"model": spec["name"], "variant": variant["name"], "batch": batch}
                row |= {"runtime": predictor.runtime, "precision": predictor.precision}
                row |= runtime_speed(a, predictor, strips, batch)
                row |= runtime_dice(scores, ref)
                rows.append(row)
                log.info("runtimes %s", row)
            del predictor
            gc.collect()
        for row in rows:
            add_speedups(row, rows, spec["name"])
        info["auto"], predictor = runtime_auto(a, spec, strips, test, ref, rows)
        info["predict_folder"] = runtime_folder(a, spec, predictor, folder, info["auto"])
    return info, rows


def runtime_auto(args, spec, strips, test, ref, rows) -> tuple[dict[str, Any], Any]:
    """What ``steelseg.deploy.load_predictor(checkpoint)`` (``--runtime auto``) picks and
    how long the choice took; its speed and accuracy are those of the same variant measured
    above (the same engine on the same export), else measured here."""
    from steelseg.deploy import load_predictor

    t = time.perf_counter()
    predictor = load_predictor(spec["checkpoint"], device="cpu")
    choice = predictor.choice or {}
    variant = runtime_variant(predictor)
    same = [r for r in rows if (r["model"], r["variant"]) == (spec["name"], variant)]
    out: dict[str, Any] = {
        "runtime": predictor.runtime,
        "precision": predictor.precision,
        "variant": variant,
        "measured_as": variant if same else None,
        "choose_s": round(time.perf_counter() - t, 1),
        "choice_speedup": round(choice["speedup"], 2) if choice.get("speedup") else None,
        "reason": choice.get("reason"),
        "batches": [],
    }
    speed_keys = ("images_per_s", "mean_images_per_s", "strip_images_per_s", "speedup")
    speed_keys += ("strip_speedup",)
    for batch in args.runtime_batches:
        row = {"batch": batch}
        if same:
            row |= {k: next(r for r in same if r["batch"] == batch)[k] for k in speed_keys}
        else:
            row |= runtime_speed(args, predictor, strips, batch)
            add_speedups(row, rows, spec["name"])
        out["batches"].append(row)
    if same:
        out |= {k: same[0][k] for k in DICE_KEYS}
    else:
        out |= runtime_dice(runtime_accuracy(args, predictor, test), ref)
    log.info("runtimes auto %s", out)
    return out, predictor


#: what steelseg-predict writes in each folder run (``--outputs``): everything (the default),
#: ``--masks-only``, and the CSV alone (``--outputs none``)
FOLDER_OUTPUTS = {"all": None, "masks,coco": ("masks", "coco"), "none": ()}


def runtime_folder(args, spec, predictor, folder: Path, auto: dict[str, Any]) -> dict[str, Any]:
    """``steelseg-predict`` (predict_to_folder: read, predict, then masks, overlays, COCO,
    CSV) over the folder of strips with the automatic choice, against its model-only images/s
    (the mean over calls: the folder's is a mean too): the default outputs, and in
    ``by_outputs`` each of :data:`FOLDER_OUTPUTS`."""
    from steelseg.inputs import collect_inputs
    from steelseg.writer import OUTPUTS, predict_to_folder

    batch = max(args.runtime_batches)
    model = next(r for r in auto["batches"] if r["batch"] == batch)["mean_images_per_s"]
    sources, _ = collect_inputs([folder])
    predictor.batch_size = batch
    rows = {}
    for name, outputs in FOLDER_OUTPUTS.items():
        out = spec["folder"] / "predict"
        shutil.rmtree(out, ignore_errors=True)
        summary = predict_to_folder(
            predictor, sources, out, outputs=OUTPUTS if outputs is None else outputs,
            progress=False,
        )  # fmt: skip
        rows[name] = {
            "images": summary["images"],
            "batch": batch,
            "runtime": summary["runtime"],
            "precision": summary["precision"],
            "seconds": summary["seconds"],
            "images_per_s": summary["images_per_second"],
            "model_images_per_s": model,
            "over_model": ratio(summary["images_per_second"], model, 3),
        }
        log.info("runtimes predict folder, outputs %s: %s", name, rows[name])
    return {**rows["all"], "by_outputs": rows}
