"""Pseudo-labelling: confident predictions on unlabelled images become extra training data.

The idea of the seed and of the 1st-place Kaggle solution: predict on unlabelled images (e.g.
the Kaggle ``test_images/``), keep only the images the model is sure about, and train again
with them added::

    steelseg-pseudo CHECKPOINT data/severstal/test_images --out data/pseudo
    steelseg-train data=severstal data.root=data/severstal '++data.extra_roots=[data/pseudo]'

An image is kept when at most ``max_uncertain`` of its pixels (default 0: none) have a
probability between ``low`` and ``high`` (default 0.2 and 0.8). ``OUT`` is a Kaggle-layout
folder:

* ``train_images/``: links to the kept images (or copies with ``--copy``);
* ``train.csv``: ``ImageId,ClassId,EncodedPixels``, one row per kept image and predicted
  defect class (ClassId 1..4 for a model with ``model.classes=4``). A binary model does not
  know the defect class, so its ClassId is :data:`steelseg.rle.ANY_CLASS` (0); kept images
  without a row are defect-free, as in Kaggle's file. steelseg reads ClassId 0 only where
  asked to (``data.extra_roots`` of a binary model, prediction);
* ``scores.csv``: every image tried, with its uncertain fraction, whether it was kept and
  its predicted defect area; ``pseudo.json``: the settings and counts.

``data.extra_roots`` adds those images to the training split only; validation and test stay
the labelled split's, so scores remain comparable.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from steelseg import rle
from steelseg.inputs import (
    Skipped,
    Source,
    collect_inputs,
    log_skip,
    no_images_error,
    none_readable_error,
    unmatched_reason,
)
from steelseg.io import atomic_dir, atomic_write_text, check_out_folder
from steelseg.predict import Predictor


def uncertain_fraction(prob: np.ndarray, low: float, high: float) -> float:
    """Share of pixels whose probability lies strictly between ``low`` and ``high``."""
    return float(np.count_nonzero((prob > low) & (prob < high))) / prob.size


def check_settings(out: str | os.PathLike, low: float, high: float, max_uncertain: float) -> None:
    """Raise ``ValueError`` for bad thresholds or an ``out`` folder that is not ours to
    replace (before a model is loaded)."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    if not 0.0 <= max_uncertain <= 1.0:
        raise ValueError(f"max_uncertain must be a fraction in [0, 1], got {max_uncertain}")
    out = Path(out)
    check_out_folder(out)
    if out.exists() and any(out.iterdir()) and not (out / "pseudo.json").exists():
        raise ValueError(
            f"{out} is not empty and not an earlier steelseg-pseudo output; choose another --out"
        )


def pseudo_label(
    predictor: Predictor,
    images: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    low: float = 0.2,
    high: float = 0.8,
    max_uncertain: float = 0.0,
    copy: bool = False,
    progress: bool | None = True,
    on_skip: Callable[[Source, str], None] = log_skip,
) -> dict:
    """Predict on ``images`` and write the confident ones as a Kaggle-layout folder ``out``.

    Args:
        predictor: The model, with the post-processing that makes the masks.
        images: Image files, folders or globs (as for ``steelseg-predict``).
        out: Output folder; replaced as a whole when it holds an earlier pseudo-label set.
        low: Probabilities at or below this are confidently clean.
        high: Probabilities at or above this are confidently defect.
        max_uncertain: Largest share of pixels in between for an image to be kept.
        copy: Copy the images instead of linking to them.
        progress: Show a progress bar (None: on a terminal).
        on_skip: Told each input that cannot be used (unreadable, not 1600x256, a second
            image of the same name) and why.

    Returns:
        The summary also written to ``out/pseudo.json``; its ``skipped`` maps each skipped
        input to the reason.

    Raises:
        ValueError: bad thresholds, no images (or none readable), or ``out`` is a non-empty
            folder that is not an earlier pseudo-label set.
    """
    check_settings(out, low, high, max_uncertain)
    out = Path(out)
    sources, empty = collect_inputs([str(i) for i in images])
    if not sources:
        raise no_images_error(images)
    skipped = Skipped(on_skip)
    for text in empty:
        skipped(Source(Path(text), text), unmatched_reason(text))
    seen: set[str] = set()

    def unique_id(source: Source, image: np.ndarray) -> None:
        if source.image_id in seen:
            raise ValueError(f"a second image named {source.image_id}")
        seen.add(source.image_id)

    scores, labels, kept = [], [], {}
    for p in predictor.predict_files(
        sources, rle.SHAPE, check=unique_id, on_skip=skipped, progress=progress, desc="pseudo"
    ):
        frac = uncertain_fraction(p.prob, low, high)
        mask = p.mask(predictor.postprocess)  # (H, W), or (C, H, W) for a model with classes
        keep = frac <= max_uncertain
        scores.append((p.source.image_id, frac, keep, int(mask.sum())))
        if keep:
            kept[p.source.image_id] = p.source.path
            # a binary model's labels are of any class (ClassId 0); a 4-class model's per class
            by_class = enumerate(mask, start=1) if mask.ndim == 3 else [(rle.ANY_CLASS, mask)]
            for class_id, m in by_class:
                encoded = rle.encode(m)
                if encoded:
                    labels.append((p.source.image_id, class_id, encoded))
    if not scores:  # every input skipped: write no empty pseudo-label set over ``out``
        raise none_readable_error()
    summary = {
        "images": len(scores),
        "kept": len(kept),
        "kept_with_defect": len({image_id for image_id, _, _ in labels}),
        "low": low,
        "high": high,
        "max_uncertain": max_uncertain,
        "postprocess": predictor.postprocess.to_dict(),
        "tta": list(predictor.tta),
        "class_id": rle.ANY_CLASS if predictor.classes == 1 else "1.." + str(predictor.classes),
        "images_linked": not copy,
        "skipped": skipped.by_path(),
    }
    _write_folder(out, kept, labels, scores, summary, copy)
    return summary


def _write_folder(
    out: Path,
    kept: dict[str, Path],
    labels: list[tuple[str, int, str]],
    scores: list[tuple[str, float, bool, int]],
    summary: dict,
    copy: bool,
) -> None:
    """Build the folder beside ``out`` and swap it in, so ``out`` is never half written."""
    with atomic_dir(out, replace=True) as tmp:
        images = tmp / "train_images"
        images.mkdir()
        for image_id, src in kept.items():
            if copy:
                shutil.copyfile(src, images / image_id)
            else:  # absolute, so the folder can be read from anywhere
                os.symlink(src.resolve(), images / image_id)
        train = pd.DataFrame(labels, columns=["ImageId", "ClassId", "EncodedPixels"])
        atomic_write_text(tmp / "train.csv", train.to_csv(index=False))
        table = pd.DataFrame(
            scores, columns=["ImageId", "uncertain_fraction", "kept", "defect_pixels"]
        )
        atomic_write_text(tmp / "scores.csv", table.to_csv(index=False))
        atomic_write_text(tmp / "pseudo.json", json.dumps(summary, indent=2) + "\n")
