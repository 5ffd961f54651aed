"""How far a predictor on another runtime or precision is from PyTorch fp32, on labelled images.

Every place that runs a model off PyTorch fp32 checks it this way: the export's accuracy check
(:func:`steelseg.export.export`, on the run's test split), the automatic runtime choice
(:func:`steelseg.deploy.choose_runtime`, on validation images) and ``steelseg-eval`` on another
runtime. :func:`score_predictor` gives per-image Dice and pixel IoU; :func:`check_runtimes`
sets each candidate beside the reference and says which stay within the tolerance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from steelseg import metric
from steelseg.inputs import Source
from steelseg.labelled import MaskReader
from steelseg.postprocess import ClassPostProcess, PostProcess
from steelseg.predict import Predictor
from steelseg.runtime import installed

log = logging.getLogger(__name__)


def score_predictor(
    predictor: Predictor,
    sources: Sequence[Source],
    mask_of: MaskReader,
    postprocess: PostProcess | ClassPostProcess | None = None,
    progress: bool | None = False,
    desc: str = "score",
) -> dict[str, Any]:
    """Per-image Dice and pixel IoU of ``predictor`` on labelled images (the runtime checks).

    Returns:
        ``{"runtime", "precision", "n_images", "dice_per_image", "iou", "images_per_s"}``;
        images/s includes reading the files.
    """
    pp = postprocess or predictor.postprocess
    counts = []
    start = time.perf_counter()
    for p in predictor.predict_files(
        sources, check=mask_of.check, on_skip=lambda s, r: None, progress=progress, desc=desc
    ):
        counts.append(metric.mask_counts(p.defect_mask(pp), mask_of(p.source.image_id)))
    seconds = time.perf_counter() - start
    if not counts:
        raise ValueError("none of the labelled images could be read")
    scores = metric.pixel_scores(*(np.array(c, dtype=np.int64) for c in zip(*counts)))
    return {
        "runtime": predictor.runtime,
        "precision": predictor.precision,
        "n_images": len(counts),
        "dice_per_image": float(scores["dice_per_image"]),
        "iou": float(scores["iou"]),
        "images_per_s": round(len(counts) / max(seconds, 1e-9), 3),
    }


def runtime_check(
    reference: Mapping[str, Any], scores: Mapping[str, Any], tolerance: float
) -> dict[str, Any]:
    """``scores`` against the PyTorch fp32 ``reference`` (both from :func:`score_predictor`):
    the per-image Dice drop, and whether it is within ``tolerance``."""
    drop = reference["dice_per_image"] - scores["dice_per_image"]
    return {
        **scores,
        "reference_dice_per_image": reference["dice_per_image"],
        "reference_iou": reference["iou"],
        "dice_drop": drop,
        "iou_drop": reference["iou"] - scores["iou"],
        "tolerance": tolerance,
        "ok": bool(drop <= tolerance),
    }


def reference_predictor(predictor: Predictor) -> Predictor | None:
    """The same model on PyTorch fp32 (with the same post-processing and flips), to check
    ``predictor`` against; None when it is that already, or when PyTorch or the checkpoint
    behind an export is not here (logged)."""
    if (predictor.runtime, predictor.precision) == ("torch", "fp32"):
        return None
    source = predictor.checkpoint
    if source is None or not source.is_file() or not installed("torch"):
        log.warning(
            "no PyTorch fp32 check of %s: %s",
            predictor.describe(),
            "PyTorch is not installed"
            if source and source.is_file()
            else "no checkpoint behind it",
        )
        return None
    return Predictor.from_checkpoint(
        source,
        "cpu",
        postprocess=predictor.postprocess,
        tta=predictor.tta,
        batch_size=predictor.batch_size,
        precision="fp32",
    )


def check_text(row: Mapping[str, Any], split: str) -> str:
    """One line: a runtime's per-image Dice and IoU on ``split`` beside PyTorch fp32's."""
    return (
        f"{row['runtime']} {row['precision']}: per-image Dice {row['dice_per_image']:.4f} vs "
        f"{row['reference_dice_per_image']:.4f} for PyTorch fp32 (drop {row['dice_drop']:+.4f}, "
        f"tolerance {row['tolerance']}), IoU {row['iou']:.4f} vs {row['reference_iou']:.4f} on "
        f"{row['n_images']} {split} images"
    )


def check_runtimes(
    reference: Predictor,
    candidates: Iterable[tuple[str, str, Callable[[], Predictor]]],
    sources: Sequence[Source],
    mask_of: MaskReader,
    tolerance: float,
    progress: bool | None = False,
    desc: str = "check",
    measure: Callable[[Predictor], Mapping[str, Any]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score the PyTorch fp32 ``reference`` and each candidate on the same labelled images.

    Args:
        reference: The model on PyTorch fp32.
        candidates: ``(runtime, precision, make)``; ``make()`` builds that predictor. One
            that cannot run here (``ValueError``, ``OSError``, ``RuntimeError`` while it is
            built or run) is left out with a warning.
        sources, mask_of: The labelled images.
        tolerance: The per-image Dice drop accepted.
        progress: Progress bars, one per candidate.
        desc: The bars' prefix.
        measure: More numbers of each candidate for its row (e.g. its speed).

    Returns:
        The reference's scores (:func:`score_predictor`) and one :func:`runtime_check` row
        per candidate that ran, with ``seconds_to_measure``.
    """
    ref = score_predictor(reference, sources, mask_of, None, progress, f"{desc}: torch fp32")
    rows = []
    for runtime, precision, make in candidates:
        start = time.perf_counter()
        try:
            predictor = make()
            extra = dict(measure(predictor)) if measure is not None else {}
            scores = score_predictor(
                predictor, sources, mask_of, None, progress, f"{desc}: {runtime} {precision}"
            )
        except (ValueError, OSError, RuntimeError) as e:  # a runtime that cannot run it here
            log.warning("%s: %s %s left out: %s", desc, runtime, precision, e)
            continue
        row = runtime_check(ref, scores, tolerance) | extra
        row["seconds_to_measure"] = round(time.perf_counter() - start, 2)
        rows.append(row)
    return ref, rows
