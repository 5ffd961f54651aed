"""``steelseg-predict``'s work: predictions of image files written into a folder.

:func:`predict_to_folder` reads the images through :meth:`Predictor.predict_files`, and in
background threads post-processes each prediction and writes its mask, overlay and (where the
inputs carry labels) the reference demo's four-panel picture; then the CSV of every mask,
``predict.json`` and, for a Kaggle test folder, ``submission.csv``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from steelseg import draw, metric, rle, submission
from steelseg.coco import concat, masks_to_coco, write_coco
from steelseg.inputs import Skipped, Source, log_skip, none_readable_error, unmatched_reason
from steelseg.io import atomic_write_text, check_out_folder, write_png
from steelseg.labelled import model_class_names
from steelseg.layouts import class_names, read_mask
from steelseg.postprocess import class_map
from steelseg.predict import AnyPostProcess, Prediction, Predictor
from steelseg.submission import Sample

log = logging.getLogger(__name__)

#: background threads that post-process and write outputs while the model runs (OpenCV
#: releases the GIL while it encodes)
WRITE_THREADS = 2
PREDICTIONS_COCO = "predictions.coco.json"  # the predictions as COCO polygon instances
SCORES_CSV = "scores.csv"  # predict_to_folder's ``score`` of each image
#: what predict_to_folder can write besides predictions.csv and predict.json (all by default)
OUTPUTS = ("masks", "overlays", "panels", "coco")
#: a stand-in for ``Predictor.predict_files``: the same arguments, the predictor first
#: (steelseg.distributed.RayEngine.predict_files runs the model on Ray actors)
PredictFiles = Callable[..., Iterable[Prediction]]


def predict_to_folder(
    predictor: Predictor,
    sources: Sequence[Source],
    out: str | os.PathLike,
    postprocess: AnyPostProcess | None = None,
    outputs: Collection[str] = OUTPUTS,
    on_skip: Callable[[Source, str], None] = log_skip,
    progress: bool | None = None,
    unmatched: Sequence[str] = (),
    sample: Sample | None = None,
    score: Callable[[Prediction], Mapping[str, float]] | None = None,
    predict_files: PredictFiles | None = None,
) -> dict[str, Any]:
    """Predict image files into ``out``: ``steelseg-predict``'s work.

    Writes ``masks/<stem>.png``, ``overlays/<stem>.png``, ``panels/<stem>.png`` (the reference
    demo's four panels, where ground truth is known: a Kaggle-layout folder or its
    ``train_images/`` with train.csv beside it, or a folder layout's ``images/`` with
    ``masks/``), ``predictions.csv`` (``ImageId,ClassId,EncodedPixels,ClassName``),
    ``predictions.coco.json`` (a polygon instance per connected component of each class, its
    ``score`` the mean probability inside it: :func:`steelseg.coco.masks_to_coco`),
    ``predict.json`` (settings, counts, speed, skipped inputs) and, given a ``sample``,
    ``submission.csv``.

    Class names are those of the data the model was trained on
    (:func:`steelseg.labelled.model_class_names`); ``submission.csv`` keeps Kaggle's ids.

    * A binary model: masks 0/255; overlays with the prediction red (with ground truth: found
      green, false alarm red, missed blue); one CSV row per image, ClassId 0 (any defect
      class), EncodedPixels empty for no defect.
    * A model of C > 1 classes: masks hold the class id of each pixel (0: no defect; where
      classes overlap, the most probable); overlays tint each class in its
      :data:`steelseg.draw.CLASS_RGB` colour; panels compare the defects of any class with
      the ground truth; CSV rows: one per (image, class) with a defect, ClassId 1..C, and
      one row ClassId 0 with empty EncodedPixels for an image without any.

    Args:
        predictor: The model.
        sources: The images (:func:`steelseg.inputs.collect_inputs` expands files, folders
            and globs).
        out: The output folder.
        postprocess: Replaces the predictor's post-processing.
        outputs: Which of :data:`OUTPUTS` to write (``predictions.csv``, ``predict.json``
            and the submission are always written): the pictures cost most of the time
            besides the model (an overlay's PNG alone as much as the quickstart model).
        on_skip: Told each skipped input and why.
        progress: A progress bar (None: on a terminal).
        unmatched: Inputs that named no image (recorded as skipped).
        sample: A Kaggle ``sample_submission.csv`` (:func:`steelseg.submission.read_sample`)
            whose every image is among ``sources``: also write ``submission.csv`` in its
            layout (an image of it that is skipped gets empty rows, and is named), and check
            it as Kaggle would (``submission`` in the returned summary).
        score: Numbers of each prediction, which then carries its probabilities without
            test-time flips too (``Prediction.plain``), e.g. the uncertainty of
            :func:`steelseg.review.uncertainty`: written to ``scores.csv`` (``ImageId`` and
            one column per number; ``scores`` in the returned summary).
        predict_files: How the model runs over the images: a stand-in for
            ``predictor.predict_files`` taking the same arguments with the predictor first,
            e.g. :meth:`steelseg.distributed.RayEngine.predict_files` (Ray actors); its
            predictions are written alike. None: ``predictor.predict_files``, here.

    Returns:
        The content of ``predict.json``; its ``skipped`` maps each skipped input to the reason.

    Raises:
        ValueError: no sources, ``out`` cannot be a folder, a post-processing this model
            cannot take, or a ``sample`` this model or these sources cannot answer (checked
            before any image is predicted); no source could be read (nothing is written).
    """
    out = Path(out)
    outputs = check_outputs(outputs)
    _check_request(predictor, sources, out, sample)
    skipped = Skipped(on_skip)
    skipped.extend((Source(Path(text), text), unmatched_reason(text)) for text in unmatched)
    pp = predictor.postprocess if postprocess is None else predictor.check_postprocess(postprocess)
    names = model_class_names(predictor.checkpoint or predictor.model_file, predictor.classes)
    writer = _ImageWriter(
        out, pp, predictor.classes, _Truth(sources), sample, outputs, score, names
    )
    saved, seconds = _predict_and_write(
        predictor, sources, writer, skipped, progress, predict_files
    )
    if not saved:  # every input skipped: nothing was done (as steelseg-eval says it)
        raise none_readable_error()
    _write_csv(out / "predictions.csv", [row for s in saved for row in s.rows], names)
    if "coco" in outputs:
        write_coco(out / PREDICTIONS_COCO, concat([s.coco for s in saved if s.coco], names))
    summary = _summary(predictor, pp, saved, seconds, skipped)
    summary["outputs"] = list(outputs)
    if score is not None:
        _write_scores(out / SCORES_CSV, saved)
        summary["scores"] = SCORES_CSV
    if sample is not None:
        rles = {s.image_id: s.class_rles for s in saved if s.class_rles is not None}
        summary["submission"] = submission.write_checked(out / "submission.csv", sample, rles)
    atomic_write_text(out / "predict.json", json.dumps(summary, indent=2) + "\n")
    return summary


def check_outputs(outputs: Collection[str]) -> tuple[str, ...]:
    """``outputs`` in :data:`OUTPUTS`' order.

    Raises:
        ValueError: a name that is not one of :data:`OUTPUTS`.
    """
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise ValueError(
            f"unknown output(s) {', '.join(unknown)}: choose from {', '.join(OUTPUTS)}"
        )
    return tuple(o for o in OUTPUTS if o in outputs)


def _check_request(
    predictor: Predictor, sources: Sequence[Source], out: Path, sample: Sample | None
) -> None:
    """Refuse, before any image is predicted, what cannot be written."""
    if not sources:
        raise ValueError("no input images found")
    check_out_folder(out)
    if sample is not None:
        submission.check_submission(sample, predictor.classes, sources)


def _predict_and_write(
    predictor: Predictor,
    sources: Sequence[Source],
    writer: _ImageWriter,
    skipped: Skipped,
    progress: bool | None,
    predict_files: PredictFiles | None = None,
) -> tuple[list[_Saved], float]:
    """Run the model over ``sources`` while writer threads post-process and write each
    prediction (in order; at most a few batches wait, so memory stays flat)."""
    saved: list[_Saved] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(WRITE_THREADS, "steelseg-write") as pool:
        waiting: deque = deque()
        run = partial(predict_files, predictor) if predict_files else predictor.predict_files
        for p in run(
            sources,
            check=writer.check,
            on_skip=skipped,
            with_plain=writer.score is not None,
            progress=progress,
        ):
            waiting.append(pool.submit(writer, p))
            while len(waiting) > 2 * predictor.batch_size:
                saved.append(waiting.popleft().result())
        saved.extend(f.result() for f in waiting)
    return saved, time.perf_counter() - start


@dataclass
class _Saved:
    """What predict_to_folder keeps of one image: its CSV rows, the RLE of each class (for
    the submission) and whether it has a panel."""

    image_id: str
    rows: list[tuple[str, int, str]]
    class_rles: list[str] | None = None  # only for the images of a submission's sample
    panel: bool = False
    score: Mapping[str, float] | None = None  # predict_to_folder's ``score`` of the image
    coco: dict | None = None  # its instances (masks_to_coco)


class _ImageWriter:
    """Checks each read image, then post-processes its prediction and writes its pictures
    (called in a writer thread)."""

    def __init__(
        self,
        out: Path,
        postprocess: AnyPostProcess,
        classes: int,
        truth: _Truth,
        sample: Sample | None,
        outputs: Collection[str],
        score: Callable[[Prediction], Mapping[str, float]] | None = None,
        names: Mapping[int, str] | None = None,
    ) -> None:
        self.out, self.postprocess, self.truth = out, postprocess, truth
        self.names = names or class_names(None, classes)  # {class id: name}
        self.score = score
        self.binary = classes == 1
        self.outputs = outputs
        self.in_sample = set(sample.image_ids) if sample is not None else set()
        self.stems: dict[str, Path] = {}

    def check(self, s: Source, image: np.ndarray) -> None:
        """Refuse an image of a submission that is not 1600x256, or one whose outputs would
        overwrite another's (``Predictor.predict_files``'s ``check``)."""
        if s.image_id in self.in_sample and image.shape != rle.SHAPE:
            raise ValueError(
                f"it is {image.shape[1]}x{image.shape[0]}; a Kaggle submission needs "
                f"{rle.SHAPE[1]}x{rle.SHAPE[0]} images"
            )
        stem = Path(s.image_id).stem
        if stem in self.stems:
            raise ValueError(
                f"same name as {self.stems[stem]} (outputs would collide); predict the two "
                "folders into different --out folders"
            )
        self.stems[stem] = s.path

    def __call__(self, p: Prediction) -> _Saved:
        image_id, stem = p.source.image_id, Path(p.source.image_id).stem
        mask = p.mask(self.postprocess)  # (H, W), or (C, H, W) per class
        if self.binary:
            ids = mask.astype(np.uint8) * 255
            encoded = [rle.encode(mask)]
            rows = [(image_id, rle.ANY_CLASS, encoded[0])]
        else:
            ids = class_map(mask, p.prob)
            encoded = [rle.encode(m) for m in mask]
            rows = [(image_id, c, e) for c, e in enumerate(encoded, 1) if e]
            rows = rows or [(image_id, rle.ANY_CLASS, "")]
        if "masks" in self.outputs:
            write_png(self.out / "masks" / f"{stem}.png", ids)
        saved = _Saved(image_id, rows, encoded if image_id in self.in_sample else None)
        if "coco" in self.outputs:
            saved.coco = masks_to_coco(
                [(image_id, mask.astype(np.uint8) if self.binary else ids)],
                self.names,
                polygons=True,
                probabilities=[p.prob],
            )
        if "overlays" in self.outputs or "panels" in self.outputs:
            saved.panel = self._pictures(p, mask, ids, stem)
        if self.score is not None:
            saved.score = self.score(p)
        return saved

    def _pictures(self, p: Prediction, mask: np.ndarray, ids: np.ndarray, stem: str) -> bool:
        """Write the overlay and, with ground truth, the four panels (as ``outputs`` asks);
        whether it wrote the panels."""
        gt = self.truth.mask(p.source, p.image.shape)
        if "overlays" in self.outputs:
            picture = draw.prediction_overlay(p.image, mask, ids, gt)
            write_png(self.out / "overlays" / f"{stem}.png", draw.to_bgr(picture))
        if gt is None or "panels" not in self.outputs:
            return False
        defect = mask if self.binary else mask.any(axis=0)  # panels: defects of any class
        dice = float(metric.dice_per_image(*metric.mask_counts(defect, gt)))
        panel = draw.four_panel(p.image, defect, gt, p.source.image_id, dice)
        write_png(self.out / "panels" / f"{stem}.png", draw.to_bgr(panel))
        return True


def _summary(
    predictor: Predictor,
    pp: AnyPostProcess,
    saved: Sequence[_Saved],
    seconds: float,
    skipped: Skipped,
) -> dict[str, Any]:
    """predict.json: the model, its settings, counts, speed and skipped inputs."""
    summary = {
        "checkpoint": str(predictor.checkpoint) if predictor.checkpoint else None,
        "model_file": str(predictor.model_file) if predictor.model_file else None,
        "runtime": predictor.runtime,
        "precision": predictor.precision,
        "device": str(predictor.device),
        "input_size": predictor.input_size,
        "classes": predictor.classes,
        "gated": predictor.gated,
        "postprocess": pp.to_dict(),
        "tta": list(predictor.tta),
        "images": len(saved),
        "with_defect": sum(1 for s in saved if any(e for _, _, e in s.rows)),
        "panels": sum(s.panel for s in saved),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(saved) / seconds, 3) if seconds > 0 else None,
        "skipped": skipped.by_path(),
        "submission": None,
    }
    if predictor.classes > 1:
        summary["with_defect_by_class"] = {
            str(c): sum(1 for s in saved if any(row[1] == c for row in s.rows))
            for c in range(1, predictor.classes + 1)
        }
    return summary


class _Truth:
    """Ground-truth masks of labelled inputs: from the train.csv of a Kaggle-layout folder
    (read once each) or from the ``masks/<stem>.png`` of a folder layout (read per image)."""

    def __init__(self, sources: Sequence[Source]) -> None:
        """Read (and validate) every train.csv first, so a bad one stops the run early."""
        self.tables = {
            csv: rle.read_annotations(csv, any_class=True)
            for csv in dict.fromkeys(s.labels for s in sources if s.labels is not None)
            if not csv.is_dir()
        }

    def mask(self, source: Source, shape: tuple[int, int]) -> np.ndarray | None:
        """The merged defect mask, bool (H, W) of ``shape``, or None when not known."""
        if source.labels is None:
            return None
        if source.labels in self.tables:
            if shape != rle.SHAPE:
                return None  # the RLE of train.csv is at 256x1600
            return rle.image_mask(self.tables[source.labels], source.image_id).astype(bool)
        path = source.labels / f"{Path(source.image_id).stem}.png"
        if not path.is_file():
            return None  # an image without its mask is unlabelled, not clean
        try:
            mask = read_mask(path)
        except ValueError as e:
            log.warning("no ground truth for %s: %s", source.path, e)
            return None
        if mask.shape != tuple(shape):
            log.warning(
                "no ground truth for %s: its mask %s is %dx%d, the image %dx%d",
                source.path,
                path,
                mask.shape[1],
                mask.shape[0],
                shape[1],
                shape[0],
            )
            return None
        return mask > 0


def _write_scores(path: Path, saved: Sequence[_Saved]) -> None:
    """``ImageId`` and each image's numbers (see :func:`predict_to_folder`'s ``score``)."""
    import pandas as pd

    rows = [{"ImageId": s.image_id, **(s.score or {})} for s in saved]
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["ImageId"])
    atomic_write_text(path, df.to_csv(index=False))


def _write_csv(path: Path, rows: Sequence[tuple[str, int, str]], names: Mapping[int, str]) -> None:
    """``ImageId,ClassId,EncodedPixels,ClassName`` rows (see :func:`predict_to_folder`);
    ClassId 0 is any class of a binary model (its one name), or no defect (no name)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
    any_class = names[1] if len(names) == 1 else ""
    df["ClassName"] = [names.get(c, any_class) for c in df["ClassId"]]
    atomic_write_text(path, df.to_csv(index=False))
