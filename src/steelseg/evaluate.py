"""``steelseg-eval``: evaluate a checkpoint on a labelled split, with and without post-processing.

::

    steelseg-eval outputs/train/runs/<time>/checkpoints/best-*.ckpt --split test

runs the model at full resolution (256x1600) over the split and writes into ``--out`` (default
``<run>/eval/<checkpoint>-<split>/``):

* ``eval.json``: pixel IoU / Dice, per-image Dice (Kaggle rule), image-level detection
  (precision, recall, F1, ROC AUC of "this image has a defect" scored by the maximum
  probability and by the predicted area, the empty vs non-empty confusion) and defect-level
  recall / precision, and the segmentation metrics the field reports (``segmentation``:
  mmsegmentation's ``mIoU``, ``mDice``, ``mAcc``, ``aAcc``, per-class ``IoU`` / ``Dice`` /
  ``Precision`` / ``Recall``, background included, and the pixel confusion matrix), each for
  the threshold alone (``threshold_only``: the model's own threshold) and for the
  post-processing in use (``postprocessed``: the tuned sidecar, or defaults, with command-line
  overrides); a threshold curve; per-image numbers.
* ``report.html``: the same as a self-contained page (see :mod:`steelseg.report`).

The labelled images come from :func:`steelseg.labelled.labelled_split`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelseg import metric, report, rle
from steelseg.accuracy import reference_predictor, runtime_check, score_predictor
from steelseg.inputs import Skipped, Source, log_skip
from steelseg.io import atomic_write_text, json_ready, read_grey, run_folder
from steelseg.labelled import LabelledImages, MaskReader, model_checkpoint
from steelseg.layouts import check_classes, class_names
from steelseg.postprocess import ClassPostProcess, PostProcess, class_map
from steelseg.predict import Predictor, apply_postprocess
from steelseg.runtime import DICE_TOLERANCE

log = logging.getLogger(__name__)

VARIANTS = ("threshold_only", "postprocessed")


def confusion_labels(classes: int) -> list[str]:
    """The rows of the pixel confusion matrix: ``background`` then ``defect`` (a binary model)
    or the class ids ``1`` .. ``C`` (eval.json's ``class_names`` names them)."""
    return ["background"] + (
        ["defect"] if classes == 1 else [str(c) for c in range(1, classes + 1)]
    )


# ----------------------------------------------------------------------------- scoring
class Scorer:
    """Accumulates every evaluation number image by image, so no probability map is kept.

    Args:
        variants: Named post-processings to score (e.g. threshold only, tuned).
        thresholds: Thresholds of the threshold curve.
        iou_threshold: Component IoU for defect-level matching.
        keep_masks: Variants whose predicted masks are kept (as RLE, in :attr:`masks`; one
            per class for a multi-class model) for drawing them later.
        classes: The model's classes: 1 (merged defect mask), or C > 1, when probabilities
            are (C, H, W) and ground truth is a class-id mask; the pixel, image and defect
            numbers then score the merged mask (any class), and per-class numbers and the
            competition's metric come on top.

    Each variant also adds up a pixel confusion matrix over background and the classes
    (:func:`steelseg.metric.confusion_matrix`; a multi-class prediction is its class-id map,
    :func:`steelseg.postprocess.class_map`), scored in :meth:`summary`'s ``segmentation``.
    """

    def __init__(
        self,
        variants: Mapping[str, PostProcess | ClassPostProcess],
        thresholds: Sequence[float] = metric.SWEEP_THRESHOLDS,
        iou_threshold: float = 0.5,
        keep_masks: Sequence[str] = (),
        classes: int = 1,
    ) -> None:
        self.variants = dict(variants)
        self.thresholds = [float(t) for t in thresholds]
        self.iou_threshold = iou_threshold
        self.classes = int(classes)
        self.images: list[dict[str, Any]] = []
        self.masks: dict[str, dict[str, Any]] = {name: {} for name in keep_masks}  # RLEs
        self._curve: list[np.ndarray] = []  # per image (3, T): tp, fp, fn
        n = self.classes + 1  # background + each class (binary: background, defect)
        self._confusion = {name: np.zeros((n, n), dtype=np.int64) for name in self.variants}

    def add(
        self,
        image_id: str,
        prob: np.ndarray,
        target: np.ndarray,
        image_prob: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Score one image.

        Shape:
            prob: (H, W), or (C, H, W) with classes; target: (H, W) bool, or class ids with
            classes; image_prob: the gate head's (C,) probabilities, or None.
        """
        many = self.classes > 1
        merged_prob = prob.max(0) if many else prob  # a pixel's most likely class
        if merged_prob.shape != target.shape or (many and len(prob) != self.classes):
            raise ValueError(f"{image_id}: probabilities {prob.shape} vs mask {target.shape}")
        truth = target > 0
        n = self.classes + 1  # background + each class
        row: dict[str, Any] = {
            "image_id": image_id,
            "gt_pixels": int(truth.sum()),
            "max_prob": float(merged_prob.max()),
        }
        if many:
            row["gt_classes"] = [int((target == c).sum()) for c in range(1, self.classes + 1)]
        for name, pp in self.variants.items():
            pred = apply_postprocess(pp, prob, image_prob)
            merged = pred.any(0) if many else pred
            self._confusion[name] += metric.confusion_matrix(
                class_map(pred, prob) if many else merged, target if many else truth, n
            )
            tp, fp, fn = metric.mask_counts(merged, truth)
            n_true, found, n_pred, matched = metric.defect_counts(merged, truth, self.iou_threshold)
            row[name] = {
                "pred_pixels": tp + fp,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "dice": float(metric.dice_per_image(tp, fp, fn)),  # Kaggle rule
                "defects": [n_true, found, n_pred, matched],
                "small_defects": list(
                    metric.small_defect_counts(merged, truth, iou_threshold=self.iou_threshold)
                ),
            }
            if many:  # (tp, fp, fn) of each class
                row[name]["classes"] = [
                    list(metric.mask_counts(pred[c], target == c + 1)) for c in range(len(pred))
                ]
            if name in self.masks:
                self.masks[name][image_id] = (
                    [rle.encode(m) for m in pred] if many else rle.encode(pred)
                )
        self._curve.append(
            np.stack(metric.counts_at_thresholds(merged_prob, truth, self.thresholds))
        )
        self.images.append(row)
        return row

    def curve(self) -> list[dict[str, float]]:
        """IoU, Dice and per-image Dice at each curve threshold (before area filters)."""
        if not self._curve:
            return []
        c = np.stack(self._curve)  # (N, 3, T)
        return metric.threshold_curve(c[:, 0], c[:, 1], c[:, 2], self.thresholds)

    def summary(self, name: str) -> dict[str, Any]:
        """Pixel, image-level and defect-level metrics of one variant (and per class)."""
        rows = [r[name] for r in self.images]
        has = np.array([r["gt_pixels"] > 0 for r in self.images], dtype=bool)
        area = np.array([r["pred_pixels"] for r in rows], dtype=np.int64)
        max_prob = np.array([r["max_prob"] for r in self.images], dtype=np.float64)
        image = metric.image_detection(area > 0, has, scores=max_prob)
        image["roc_auc_max_prob"] = image.pop("roc_auc")
        image["roc_auc_area"] = metric.roc_auc(area, has) if len(has) else math.nan
        image["confusion"] = {
            "empty_predicted_empty": image["tn"],
            "empty_predicted_defect": image["fp"],
            "defect_predicted_empty": image["fn"],
            "defect_predicted_defect": image["tp"],
        }
        defects = np.array([r["defects"] for r in rows], dtype=np.int64).reshape(-1, 4).sum(0)
        n_small, found_small = np.array([r["small_defects"] for r in rows]).reshape(-1, 2).sum(0)
        out = {
            "postprocess": self.variants[name].to_dict(),
            "pixel": metric.pixel_scores(
                *(np.array([r[k] for r in rows]) for k in ("tp", "fp", "fn"))
            ),
            "segmentation": metric.segmentation_scores(
                self._confusion[name], confusion_labels(self.classes)
            ),
            "image": image,
            "defect": {
                "iou_threshold": self.iou_threshold,
                **metric.defect_scores(*defects),
                "small_below": metric.SMALL_DEFECT,  # pixels: small defects' recall
                "small_n_true": int(n_small),
                "small_found": int(found_small),
                "small_recall": float(found_small / n_small) if n_small else math.nan,
            },
        }
        if self.classes > 1:
            counts = np.array([r["classes"] for r in rows], dtype=np.int64)  # (N, C, 3)
            tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
            out["kaggle_dice"] = metric.kaggle_dice(tp, fp, fn)
            out["classes"] = [
                {"class": c + 1, "n_images_with": int((tp[:, c] + fn[:, c] > 0).sum())}
                | metric.pixel_scores(tp[:, c], fp[:, c], fn[:, c])
                for c in range(self.classes)
            ]
        return out


# ----------------------------------------------------------------------------- evaluation
def default_out_dir(checkpoint: Path, split: str) -> Path:
    """``<run>/eval/<checkpoint name>-<split>``."""
    return run_folder(checkpoint) / "eval" / f"{checkpoint.stem}-{split}"


def evaluate(
    predictor: Predictor,
    images: LabelledImages,
    split: str = "test",
    out: str | os.PathLike | None = None,
    iou_threshold: float = 0.5,
    max_panels: int = 50,
    panel_width: int = 800,
    progress: bool | None = True,
    on_skip: Callable[[Source, str], None] = log_skip,
    check_fp32: bool = True,
    tolerance: float = DICE_TOLERANCE,
) -> dict[str, Any]:
    """Evaluate a model on labelled images; write ``eval.json`` and ``report.html``.

    Args:
        predictor: The model on any runtime, with its post-processing and flips
            (:func:`steelseg.deploy.load_predictor`: the tuned sidecar and any overrides).
        images: The labelled images (:func:`steelseg.labelled.labelled_split`).
        split: Their split's name (``train``, ``val``, ``test`` or ``all``), recorded.
        out: Output folder (default ``<run>/eval/<checkpoint>-<split>``).
        iou_threshold: Component IoU at which a true defect counts as found.
        max_panels: Per-image panels in the report (worst first).
        panel_width: Width in pixels of each panel picture (images are 1600 wide).
        progress: Show a progress bar (None: on a terminal).
        on_skip: Told each image that cannot be read (or is not its mask's size) and why.
        check_fp32: When the model runs on another runtime or precision than PyTorch fp32,
            score the images with PyTorch fp32 too (:func:`steelseg.accuracy.reference_predictor`);
            ``eval.json`` and the report then give both per-image Dice and IoU
            (``runtime_check``).
        tolerance: The per-image Dice drop below the reference the check accepts.

    Returns:
        The content of ``eval.json`` (NaN as None).
    """
    ids, paths, mask_of = images
    check_classes(predictor.classes, mask_of.n_classes, str(mask_of.where))
    out = Path(out) if out is not None else default_out_dir(_source(predictor), split)
    sources = [Source(p, i) for i, p in zip(ids, paths)]
    scorer = _scorer(predictor, iou_threshold)
    skipped = Skipped(on_skip)
    seconds = _score_images(predictor, sources, mask_of, scorer, skipped, progress, split)
    result = _result(predictor, scorer, split, paths, seconds, skipped)
    if check_fp32:
        check = _fp32_check(predictor, sources, mask_of, result, progress, split, tolerance)
        if check is not None:
            result["runtime_check"] = check
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", json.dumps(result, indent=1) + "\n")
    panels = _panel_loader(predictor.classes, dict(zip(ids, paths)), scorer, mask_of)
    report.write_report(result, panels, out / "report.html", max_panels, panel_width)
    return result


def _source(predictor: Predictor) -> Path:
    """The checkpoint behind the predictor (whose run folder holds the evaluations)."""
    return predictor.checkpoint or model_checkpoint(predictor.model_file)


def _scorer(predictor: Predictor, iou_threshold: float) -> Scorer:
    """Scores the model's own threshold alone and the post-processing in use."""
    plain = PostProcess(threshold=predictor.model_threshold)
    if predictor.classes > 1:
        plain = ClassPostProcess.uniform(plain, predictor.classes)
    return Scorer(
        {"threshold_only": plain, "postprocessed": predictor.postprocess},
        iou_threshold=iou_threshold,
        keep_masks=["postprocessed"],  # drawn in the report
        classes=predictor.classes,
    )


def _score_images(
    predictor: Predictor,
    sources: Sequence[Source],
    mask_of: MaskReader,
    scorer: Scorer,
    skipped: Skipped,
    progress: bool | None,
    split: str,
) -> float:
    """Predict and score every image; the seconds it took."""
    start = time.perf_counter()
    for p in predictor.predict_files(
        sources, check=mask_of.check, on_skip=skipped, progress=progress, desc=f"eval {split}"
    ):
        truth = mask_of(p.source.image_id, classes=predictor.classes > 1)
        scorer.add(p.source.image_id, p.prob, truth, p.image_prob)
    if not scorer.images:
        raise ValueError(f"no image of split {split!r} could be read; see the messages above")
    return time.perf_counter() - start


def _result(
    predictor: Predictor,
    scorer: Scorer,
    split: str,
    paths: Sequence[Path],
    seconds: float,
    skipped: Skipped,
) -> dict[str, Any]:
    """eval.json's content: the model and its settings, and every number."""
    model_file = Path(predictor.model_file).resolve() if predictor.model_file else None
    root = paths[0].parent.parent.resolve()  # above train_images/ or images/
    names = class_names(root, predictor.classes)  # its classes.csv, else the ids
    return json_ready(
        {
            "checkpoint": str(model_file),
            "split": split,
            "data_root": str(root),
            "class_names": {str(c): name for c, name in names.items()},
            "n_images": len(scorer.images),
            "n_defective": sum(r["gt_pixels"] > 0 for r in scorer.images),
            "classes": predictor.classes,
            "tta": list(predictor.tta),
            "device": str(predictor.device),
            "runtime": predictor.runtime,
            "precision": predictor.precision,
            "model_file": str(model_file),
            "tuned_sidecar": str(predictor.tuned_sidecar) if predictor.tuned_sidecar else None,
            "overrides": dict(predictor.overrides),
            "seconds": round(seconds, 2),
            "images_per_s": round(len(scorer.images) / max(seconds, 1e-9), 3),
            "metrics": {name: scorer.summary(name) for name in VARIANTS},
            "threshold_curve": scorer.curve(),
            "images": scorer.images,
            "skipped": skipped.by_id(),
        }
    )


def _fp32_check(
    predictor: Predictor,
    sources: Sequence[Source],
    mask_of: MaskReader,
    result: Mapping[str, Any],
    progress: bool | None,
    split: str,
    tolerance: float,
) -> dict[str, Any] | None:
    """The model on another runtime or precision against PyTorch fp32 on the same images
    (None when it is PyTorch fp32, or that cannot run here)."""
    reference = reference_predictor(predictor)
    if reference is None:
        return None
    pixel = result["metrics"]["postprocessed"]["pixel"]
    scores = {
        "runtime": predictor.runtime,
        "precision": predictor.precision,
        "n_images": result["n_images"],
        "dice_per_image": pixel["dice_per_image"],
        "iou": pixel["iou"],
        "images_per_s": result["images_per_s"],
    }
    desc = f"{split}: fp32 check"
    ref = score_predictor(reference, sources, mask_of, predictor.postprocess, progress, desc)
    return json_ready(runtime_check(ref, scores, tolerance))


def _panel_loader(
    classes: int, path_of: Mapping[str, Path], scorer: Scorer, mask_of: MaskReader
) -> Callable[[str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The report's reader of one image's (image, predicted mask, true mask); class-id masks
    for a multi-class model."""

    def load_panel(image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = read_grey(path_of[image_id])
        kept = scorer.masks["postprocessed"][image_id]
        if classes == 1:
            return image, rle.decode(kept, image.shape) > 0, mask_of(image_id)
        return image, rle.class_mask(kept, image.shape), mask_of(image_id, classes=True)

    return load_panel
