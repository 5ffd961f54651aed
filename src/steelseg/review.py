"""Active learning: the images a model is least sure of, as a labelling task.

``steelseg-predict MODEL IMAGES --out OUT --review N`` predicts as usual, scores each image's
uncertainty (:func:`uncertainty`), and writes the N most uncertain ones to ``OUT/review/``, a
task that CVAT or Label Studio imports with the model's masks as pre-annotations
(:func:`write_task`). Corrected there and exported as COCO, ``steelseg-import`` turns it into a
folder layout (``images/`` + ``masks/``) that trains with ``data.extra_roots=[DIR]``
(docs/datasets.md).

The uncertainty of an image has up to three terms, each in [0, 1], computed from one pass per
flip (the plain pass is part of the test-time average, so nothing runs twice):

* ``pixel``: the mean over pixels of how near the probability is to its class's threshold
  t: ``1 - |p - t| / max(t, 1 - t)`` (1 at the threshold, 0 at 0 or 1; the nearest class
  for a model of several);
* ``gate`` (a model with the gate head): the same closeness of the image probability to the
  gate threshold, for the class nearest it;
* ``flips``: the mean over pixels of the disagreement between the plain pass and the mean of
  the flipped passes, ``|plain - flipped|`` (the largest over classes). The review predicts
  with the model's test-time flips, or both flips when it has none.

Each term ranks the images; an image's ``score`` is the mean of its percentile ranks over the
terms (a term equal for every image, e.g. no gate head, changes no order). The N highest
scores are reviewed; ``OUT/scores.csv`` holds every image's terms.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steelseg.coco import masks_to_coco, write_coco
from steelseg.inputs import Source, log_skip
from steelseg.io import atomic_dir, atomic_write_text, json_ready
from steelseg.labelled import model_class_names
from steelseg.layouts import read_mask
from steelseg.postprocess import TTA_CHOICES, ClassPostProcess
from steelseg.predict import AnyPostProcess, Prediction, Predictor
from steelseg.submission import Sample
from steelseg.writer import OUTPUTS, SCORES_CSV, PredictFiles, predict_to_folder

REVIEW_DIR = "review"  # OUT/review/: the task
TERMS = ("pixel", "gate", "flips")
COCO_JSON = "annotations.json"  # exact masks (COCO RLE): CVAT's "COCO 1.0"
POLYGONS_JSON = "annotations_polygons.json"  # polygons without boxes: Label Studio's converter


# ----------------------------------------------------------------------------- the score
def closeness(prob: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """How near probabilities are to a threshold: 1 at it, 0 at 0 and at 1, linear between."""
    threshold = np.asarray(threshold, np.float32)
    return 1.0 - np.abs(prob - threshold) / np.maximum(threshold, 1.0 - threshold)


def uncertainty(p: Prediction, postprocess: AnyPostProcess, flips: int) -> dict[str, float]:
    """An image's uncertainty terms (see the module docstring).

    Args:
        p: The prediction, with its plain (no-flip) probabilities when ``flips``.
        postprocess: The thresholds (and gate thresholds) the masks are made with.
        flips: How many flipped passes ``p.prob`` averages with the plain one (0: none).

    Returns:
        ``{"pixel": ..., "gate": ..., "flips": ...}``; ``gate`` only for a model with the gate
        head, ``flips`` only with flips.
    """
    per_class = postprocess.classes if isinstance(postprocess, ClassPostProcess) else (postprocess,)
    prob = p.prob if p.prob.ndim == 3 else p.prob[None]  # (C, H, W)
    t = np.array([c.threshold for c in per_class], np.float32)[:, None, None]
    terms = {"pixel": float(closeness(prob, t).max(0).mean())}
    if p.image_prob is not None:
        g = np.array([c.gate_threshold for c in per_class], np.float32)
        terms["gate"] = float(closeness(np.asarray(p.image_prob), g).max())
    if flips and p.plain is not None:
        plain = p.plain if p.plain.ndim == 3 else p.plain[None]
        flipped = ((1 + flips) * prob - plain) / flips  # the mean of the flipped passes
        terms["flips"] = float(np.abs(flipped - plain).max(0).mean())
    return terms


def rank_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` (``ImageId`` and the terms) with ``score``: the mean percentile rank of its
    terms, most uncertain first (ties by ImageId)."""
    terms = [t for t in TERMS if t in scores.columns and scores[t].notna().any()]
    ranked = scores.copy()
    ranked["score"] = scores[terms].rank(pct=True).mean(axis=1) if terms else 0.0
    return ranked.sort_values(["score", "ImageId"], ascending=[False, True]).reset_index(drop=True)


# ----------------------------------------------------------------------------- the task
def write_task(
    out: str | os.PathLike,
    picked: pd.DataFrame,
    images: Mapping[str, Path],
    names: Mapping[int, str],
) -> Path:
    """Write the review task ``out/review/`` from predictions written in ``out``.

    ``review/images/`` (copies of the picked images), ``annotations.json`` (COCO, the model's
    masks from ``out/masks/`` as exact RLE instances: CVAT), ``annotations_polygons.json``
    (the same as polygons, no boxes: Label Studio's ``label-studio-converter import coco``),
    ``review.csv`` (the picked images, most uncertain first, with their terms) and
    ``README.txt`` (how to import, correct and bring the task back). Built under a temporary
    name and renamed; an earlier task is replaced.

    Args:
        out: The prediction folder (``masks/<stem>.png``, as ``steelseg-predict`` writes).
        picked: The images to review (:func:`rank_scores`' rows).
        images: {ImageId: image file}.
        names: {class id: name} of the model's classes, the task's labels (its masks: 0/255
            for one class, class ids otherwise).

    Returns:
        The task folder.
    """
    out = Path(out)
    items = []
    for iid in picked["ImageId"]:
        mask = read_mask(out / "masks" / f"{Path(iid).stem}.png")  # 0/255 -> class 1
        items.append((iid, mask))
    with atomic_dir(out / REVIEW_DIR, replace=True) as tmp:
        (tmp / "images").mkdir()
        for iid in picked["ImageId"]:
            shutil.copyfile(images[iid], tmp / "images" / iid)
        write_coco(tmp / COCO_JSON, masks_to_coco(items, names))
        polygons = masks_to_coco(items, names, polygons=True)
        for ann in polygons["annotations"]:
            ann.pop("bbox")  # Label Studio's converter would add each box as a rectangle too
        write_coco(tmp / POLYGONS_JSON, polygons)
        atomic_write_text(tmp / "review.csv", picked.to_csv(index=False))
        atomic_write_text(tmp / "README.txt", _readme(names, len(items)))
    return out / REVIEW_DIR


def _readme(names: Mapping[int, str], n: int) -> str:
    labels = ", ".join(names.values())
    return f"""steelseg review task: {n} image(s) the model is least sure of (review.csv, most
uncertain first), with the model's masks as pre-annotations. Labels: {labels}.

CVAT
  1. Create a task with the labels {labels} (type: mask or any); upload images/.
  2. Actions > Upload annotations > COCO 1.0 > annotations.json (the model's masks).
  3. Correct the masks (brush, polygon), then Actions > Export task dataset > COCO 1.0.

Label Studio
  1. pip install label-studio-converter
     label-studio-converter import coco -i annotations_polygons.json -o tasks.json \\
       --out-type predictions --image-root-url "/data/local-files/?d=review/images/"
  2. Create a project with the labelling config tasks.label_config.xml, serve images/ (Local
     storage) and import tasks.json (the model's masks as polygons, as predictions).
  3. Correct the polygons, then Export > COCO.

Then bring the corrected task back as a folder layout (images/ + masks/) and retrain with it:
  steelseg-import EXPORTED_COCO.json --format coco --images images --out corrected
  steelseg-train data=folder data.root=PLANT 'data.extra_roots=[corrected]'
(docs/datasets.md in steelseg)
"""


# ----------------------------------------------------------------------------- the loop
def with_flips(predictor: Predictor) -> Predictor:
    """The predictor with test-time flips (its own, else both), sharing its model."""
    if predictor.tta:
        return predictor
    flipped = copy.copy(predictor)
    flipped.tta = TTA_CHOICES
    return flipped


def predict_for_review(
    predictor: Predictor,
    sources: Sequence[Source],
    out: str | os.PathLike,
    n: int,
    outputs: Collection[str] = OUTPUTS,
    on_skip: Callable[[Source, str], None] = log_skip,
    progress: bool | None = None,
    unmatched: Sequence[str] = (),
    sample: Sample | None = None,
    predict_files: PredictFiles | None = None,
) -> dict[str, Any]:
    """``steelseg-predict --review N``: predict into ``out`` (as
    :func:`steelseg.writer.predict_to_folder`, with test-time flips: :func:`with_flips`),
    score every image's uncertainty, and write the ``n`` most uncertain as the task
    ``out/review/`` (:func:`write_task`).

    Returns:
        The content of ``predict.json`` with ``review``: the task folder, how many images it
        holds and the terms used.

    Raises:
        ValueError: ``n`` < 1, or as :func:`steelseg.writer.predict_to_folder`.
    """
    if n < 1:
        raise ValueError(f"--review {n}: review at least 1 image")
    out = Path(out)
    reviewer = with_flips(predictor)
    pp = reviewer.postprocess
    score = functools.partial(uncertainty, postprocess=pp, flips=len(reviewer.tta))
    summary = predict_to_folder(
        reviewer,
        sources,
        out,
        outputs=outputs,
        on_skip=on_skip,
        progress=progress,
        unmatched=unmatched,
        sample=sample,
        score=score,
        predict_files=predict_files,
    )
    ranked = rank_scores(pd.read_csv(out / SCORES_CSV, dtype={"ImageId": str}))
    picked = ranked.head(n)
    names = model_class_names(predictor.checkpoint or predictor.model_file, predictor.classes)
    task = write_task(out, picked, {s.image_id: s.path for s in sources}, names)
    summary["review"] = {
        "folder": str(task),
        "images": len(picked),
        "terms": [t for t in TERMS if t in ranked.columns],
        "tta": list(reviewer.tta),
    }
    atomic_write_text(out / "predict.json", json.dumps(json_ready(summary), indent=2) + "\n")
    return summary
