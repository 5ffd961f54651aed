"""Every number steelseg reports about a segmentation, in plain numpy (no torch).

Evaluation, tuning and reports score masks with these functions; the training metric
(:class:`steelseg.segmetrics.SegMetrics`) scores its counts with them too, once per epoch.

Pixel metrics go through one path: per-image counts (true positives, false positives, false
negatives; :func:`mask_counts`, :func:`counts_at_thresholds`) are scored in float64 by the
formulas of ``segmentation_models_pytorch.metrics`` (smp; ``tests/test_metric_library.py`` pins
each function to it):

* **IoU / Dice** are dataset-level ("micro"): the counts are summed over every pixel of every
  image, then divided once (:func:`iou`, :func:`dice`); 1.0 when there is nothing to find and
  nothing was found.
* **Per-image Dice** is each image's Dice (:func:`dice_per_image`), where an empty prediction on
  an empty mask counts 1 (the Kaggle competition's rule) and a non-empty prediction on an empty
  mask 0; its mean over images is the headline ``dice_per_image``.
* :func:`pixel_scores` gives all three (and the summed counts) from per-image counts,
  :func:`threshold_curve` / :func:`threshold_sweep` the same at every threshold.

Segmentation metrics as the field reports them (mmsegmentation's ``IoU``, ``Acc``, ``aAcc``,
``mIoU``, ``mAcc``, ``mDice``; the NEU papers' mIoU) come from a pixel confusion matrix over
background and every class (:func:`confusion_matrix`, scored by :func:`segmentation_scores`):
each class's IoU, Dice, precision and recall, then their mean over the classes, background
included.

Detection metrics (image level: :func:`image_detection`, :func:`roc_auc`; defect level:
:func:`defect_counts`, :func:`defect_detection`) work on full-resolution masks; no library
matches connected components, and :func:`roc_auc` stays exact rank-based code (see there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from steelseg.coco import CONNECTIVITY

#: what a run scores (:class:`steelseg.segmetrics.SegMetrics`), logged as ``val/<name>``,
#: ``test/<name>``
NAMES = ("iou", "dice", "dice_per_image")
#: the headline numbers of a run (printed by steelseg-train, the first columns of a sweep summary)
HEADLINE = tuple(f"{split}/{name}" for split in ("val", "test") for name in NAMES)
#: default thresholds of :func:`threshold_sweep`: 0.05, 0.10, ..., 0.95
SWEEP_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


# ----------------------------------------------------------------------------- counts
def mask_counts(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of one predicted mask.

    Shape:
        pred, target: (H, W) (any shape, the same for both), bool or {0, 1}.
    """
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must have the same shape")
    tp = int(np.count_nonzero(pred & target))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(target)) - tp


def counts_at_thresholds(
    prob: np.ndarray, target: np.ndarray, thresholds: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tp, fp, fn of one image at every threshold (``prob >= t``), from two histograms.

    Each pixel is binned by how many thresholds it passes, so all thresholds cost one pass.
    Thresholds are compared at the precision of ``prob``, exactly as numpy's ``prob >= t`` (and
    torch's) compares a float32 array with a Python float.

    Args:
        prob: Probabilities of one image.
        target: Its ground-truth mask, bool or {0, 1}.
        thresholds: Strictly increasing.

    Returns:
        ``(tp, fp, fn)``, three int64 arrays of ``len(thresholds)``.

    Raises:
        ValueError: thresholds not strictly increasing (at the precision of ``prob``), or
            ``prob`` and ``target`` of different shapes.

    Shape:
        prob, target: (H, W) (any shape, the same for both). Returns three (T,).
    """
    prob, target = np.asarray(prob), np.asarray(target)
    if prob.shape != target.shape:
        raise ValueError(f"prob {prob.shape} and target {target.shape} must have the same shape")
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    if not np.issubdtype(prob.dtype, np.floating):
        prob = prob.astype(np.float64)
    t_cmp = t.astype(prob.dtype)  # a float32 map is cut at float32(t), as `prob >= t` does
    if np.any(np.diff(t) <= 0) or np.any(np.diff(t_cmp) <= 0):
        raise ValueError(
            f"thresholds must be increasing (and distinct in {prob.dtype}), got {list(thresholds)}"
        )
    idx = np.searchsorted(t_cmp, prob.ravel(), side="right")  # how many thresholds each passes
    idx[np.isnan(prob.ravel())] = 0  # NaN >= t is False (searchsorted would sort NaN last)
    target = target.ravel().astype(bool)
    ge_all = np.cumsum(np.bincount(idx, minlength=len(t) + 1)[::-1])[::-1][1:]
    tp = np.cumsum(np.bincount(idx[target], minlength=len(t) + 1)[::-1])[::-1][1:]
    return tp, ge_all - tp, int(target.sum()) - tp


# ----------------------------------------------------------------------------- scores
# smp's iou_score and f1_score, in float64 numpy. Counts are whole numbers, exact in float64 (a
# dataset's pixel counts exceed float32's 2**24), so every score rounds once, in its division,
# and equals smp's float64 number bit for bit. Arguments are anything np.asarray takes: numpy
# arrays, Python ints, CPU tensors.
def _float64(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> tuple[np.ndarray, ...]:
    """The counts as float64 arrays of one shape."""
    out = tuple(np.asarray(c, dtype=np.float64) for c in (tp, fp, fn))
    if not out[0].shape == out[1].shape == out[2].shape:
        raise ValueError(f"tp, fp and fn must have the same shape, got {[c.shape for c in out]}")
    return out


def _ratio_or_one(num: np.ndarray, den: np.ndarray) -> np.ndarray | np.float64:
    """``num / den`` elementwise, 1 where ``den`` is 0: nothing to find and nothing found (smp's
    ``zero_division=1.0``). An ``np.float64`` when 0-d."""
    with np.errstate(divide="ignore", invalid="ignore"):
        score = num / den
    return np.where(den == 0, 1.0, score)[()]


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray | np.float64:
    return _ratio_or_one(tp, tp + fp + fn)  # smp's _iou_score


def _dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray | np.float64:
    return _ratio_or_one(2 * tp, 2 * tp + fn + fp)  # smp's _fbeta_score with beta 1


def iou(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> np.float64:
    """Dataset-level IoU of summed counts (smp ``iou_score``, micro); 1.0 when all are empty.

    Shape:
        tp, fp, fn: any shape, the same for all, e.g. (N,) per image.
    """
    return _iou(*(c.sum() for c in _float64(tp, fp, fn)))


def dice(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> np.float64:
    """Dataset-level Dice (F1) of summed counts (smp ``f1_score``, micro); 1.0 when all are empty.

    Shape:
        tp, fp, fn: any shape, the same for all, e.g. (N,) per image.
    """
    return _dice(*(c.sum() for c in _float64(tp, fp, fn)))


def dice_per_image(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> np.ndarray | np.float64:
    """Dice of each element (smp ``f1_score``, no reduction); 0/0 is 1 (Kaggle rule).

    An element is usually one image: an empty prediction on an empty mask scores 1, anything
    predicted on an empty mask 0. Elementwise, so any grid of counts works (the tuner's
    (areas, totals) grid of one image).

    Shape:
        tp, fp, fn: any shape, the same for all. Returns float64 of that shape (an
        ``np.float64`` when 0-d).
    """
    return _dice(*_float64(tp, fp, fn))


def iou_per_image(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> np.ndarray | np.float64:
    """IoU of each element (smp ``iou_score``, no reduction); 0/0 is 1.

    On counts already summed over images (e.g. the tuner's (thresholds, areas, totals) sums)
    each element is the dataset-level IoU of that setting, equal to :func:`iou` of its images.

    Shape:
        tp, fp, fn: any shape, the same for all. Returns float64 of that shape (an
        ``np.float64`` when 0-d).
    """
    return _iou(*_float64(tp, fp, fn))


def pixel_scores(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> dict[str, float]:
    """Dataset-level IoU / Dice and mean per-image Dice (Kaggle rule) from per-image counts.

    ``dice_per_image`` is smp's ``f1_score`` with ``reduction="micro-imagewise"`` (each image's
    Dice, then their mean); NaN when there is no image.

    Returns:
        ``iou``, ``dice``, ``dice_per_image`` (floats) and the summed ``tp``, ``fp``, ``fn``
        (ints).

    Shape:
        tp, fp, fn: (N,), one element per image.
    """
    t, p, n = (c.ravel() for c in _float64(tp, fp, fn))
    per_image = _dice(t, p, n)
    return {
        "iou": float(iou(t, p, n)),
        "dice": float(dice(t, p, n)),
        "dice_per_image": float(per_image.mean()) if per_image.size else math.nan,
        "tp": int(t.sum()),
        "fp": int(p.sum()),
        "fn": int(n.sum()),
    }


def kaggle_dice(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> float:
    """The Severstal competition's metric: mean Dice over (image, class) pairs, 1 where the
    prediction and the truth are both empty.

    Shape:
        tp, fp, fn: (N, C) counts of each image and class.
    """
    return float(np.mean(dice_per_image(tp, fp, fn)))


# ----------------------------------------------------------------------------- confusion matrix
# mmsegmentation's IoUMetric (mmseg/evaluation/metrics/iou_metric.py), in numpy: a pixel confusion
# matrix over background + classes, then per-class ratios and their mean over the classes.
# Unlike the smp scores above, a ratio whose denominator is 0 is NaN (mmsegmentation's rule: a
# class absent from truth and prediction has no IoU), and the means skip NaN (np.nanmean).
def confusion_matrix(pred: ArrayLike, target: ArrayLike, n: int) -> np.ndarray:
    """Pixel confusion matrix of class-id maps: entry ``[t, p]`` counts the pixels of true class
    ``t`` predicted as ``p`` (0 is background).

    Matrices of several images add up to the matrix of them all.

    Args:
        pred: Predicted class id of each pixel (a bool mask: background 0, defect 1).
        target: True class id of each pixel.
        n: Number of classes, background included (2 for a binary model, C + 1 for C classes).

    Returns:
        int64 counts, rows = ground truth, columns = prediction.

    Raises:
        ValueError: shapes differ, or an id is outside ``0..n-1``.

    Shape:
        pred, target: (H, W) (any shape, the same for both). Returns (n, n).
    """
    p, t = np.asarray(pred), np.asarray(target)
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} must have the same shape")
    p, t = p.ravel().astype(np.int64), t.ravel().astype(np.int64)
    if p.size and (min(p.min(), t.min()) < 0 or max(p.max(), t.max()) >= n):
        raise ValueError(
            f"class ids must be in 0..{n - 1}, got pred {p.min()}..{p.max()}, "
            f"target {t.min()}..{t.max()}"
        )
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def _ratio_or_nan(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def segmentation_scores(matrix: ArrayLike, names: Sequence[str]) -> dict[str, object]:
    """mmsegmentation's metrics of a pixel confusion matrix, background included.

    Per class ``k`` (``tp`` the diagonal entry, ``fp`` the rest of its column, ``fn`` the rest
    of its row): ``IoU = tp / (tp + fp + fn)``, ``Dice = 2tp / (2tp + fp + fn)``,
    ``Precision = tp / (tp + fp)``, ``Recall = tp / (tp + fn)`` (mmsegmentation's per-class
    ``Acc``); NaN when the denominator is 0.

    Args:
        matrix: Counts, rows = ground truth, columns = prediction (:func:`confusion_matrix`).
        names: A name for each class, background first (e.g. ``background``, ``defect``).

    Returns:
        ``aAcc`` (pixels right / all pixels), ``mIoU``, ``mDice``, ``mAcc`` (the means of
        IoU, Dice and Recall over the classes, skipping NaN), ``classes`` (name -> ``IoU``,
        ``Dice``, ``Precision``, ``Recall``, and the class's true and predicted ``pixels``,
        ``predicted``) and ``confusion`` (the matrix as lists).

    Shape:
        matrix: (n, n) with n = ``len(names)``.
    """
    m = np.asarray(matrix, dtype=np.int64)
    if m.shape != (len(names), len(names)):
        raise ValueError(f"a confusion matrix of {len(names)} classes is square, got {m.shape}")
    tp = np.diag(m).astype(np.float64)
    true, predicted = m.sum(1), m.sum(0)  # per class: pixels of it, pixels predicted as it
    per_class = {
        "IoU": _ratio_or_nan(tp, true + predicted - tp),
        "Dice": _ratio_or_nan(2 * tp, true + predicted),
        "Precision": _ratio_or_nan(tp, predicted),
        "Recall": _ratio_or_nan(tp, true),
    }
    return {
        "aAcc": _ratio(tp.sum(), m.sum()),
        "mIoU": _nanmean(per_class["IoU"]),
        "mDice": _nanmean(per_class["Dice"]),
        "mAcc": _nanmean(per_class["Recall"]),
        "classes": {
            name: {k: float(v[i]) for k, v in per_class.items()}
            | {"pixels": int(true[i]), "predicted": int(predicted[i])}
            for i, name in enumerate(names)
        },
        "confusion": m.tolist(),
    }


# ----------------------------------------------------------------------------- threshold curve
def threshold_curve(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, thresholds: Sequence[float]
) -> list[dict[str, float]]:
    """IoU, Dice and per-image Dice at each threshold, from per-image counts at each.

    Args:
        tp, fp, fn: Counts of each image at each threshold, e.g. stacked
            :func:`counts_at_thresholds` of each image.
        thresholds: The thresholds of the columns.

    Returns:
        One dict per threshold: ``threshold``, ``iou``, ``dice``, ``dice_per_image`` (floats;
        see :func:`pixel_scores`).

    Shape:
        tp, fp, fn: (N, T) with T = ``len(thresholds)``.
    """
    tp, fp, fn = (np.asarray(c).reshape(-1, len(thresholds)) for c in (tp, fp, fn))
    rows = []
    for i, t in enumerate(thresholds):
        s = pixel_scores(tp[:, i], fp[:, i], fn[:, i])
        rows.append({"threshold": float(t), **{k: s[k] for k in NAMES}})
    return rows


def threshold_sweep(
    probs: ArrayLike, target: ArrayLike, thresholds: Sequence[float] | None = None
) -> list[dict[str, float]]:
    """IoU, Dice and per-image Dice at each threshold, for choosing one on validation data.

    :func:`counts_at_thresholds` of each image, scored by :func:`threshold_curve`.

    Args:
        probs: Probabilities (after sigmoid); a tensor may sit on any device.
        target: Masks in {0, 1}.
        thresholds: Thresholds to try, in any order; default 0.05, 0.10, ..., 0.95.

    Returns:
        One dict per threshold, in the given order: ``threshold``, ``iou``, ``dice``,
        ``dice_per_image``.

    Shape:
        probs, target: (N, 1, H, W) or (N, H, W).
    """
    thresholds = list(SWEEP_THRESHOLDS if thresholds is None else thresholds)
    probs, target = _numpy(probs), _numpy(target)
    distinct, back = np.unique(np.asarray(thresholds, dtype=np.float64), return_inverse=True)
    counts = np.zeros((len(probs), 3, len(distinct)), dtype=np.int64)  # (N, 3, distinct T)
    for i, (p, m) in enumerate(zip(probs, target)):
        counts[i] = counts_at_thresholds(p, m, distinct)
    counts = counts[:, :, back.ravel()]  # (N, 3, T): back in the caller's order
    return threshold_curve(counts[:, 0], counts[:, 1], counts[:, 2], thresholds)


def _numpy(x: ArrayLike) -> np.ndarray:
    """``x`` as a numpy array; a tensor (on any device) is detached and copied to the CPU first."""
    if hasattr(x, "detach"):  # a torch.Tensor, recognised without importing torch
        x = x.detach().cpu()
    return np.asarray(x)


# ----------------------------------------------------------------------------- detection
# What an inspection engineer asks next to pixel IoU: is a defective strip flagged at all
# (image level), and is each separate defect found (defect level). Plain numpy on (H, W) masks,
# since these run on full-resolution predictions after post-processing. Ratios with a zero
# denominator (e.g. precision when nothing was predicted) are NaN: undefined, not 0 or 1.


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """Exact area under the ROC curve: P(score of a positive > score of a negative).

    Rank-based (Mann-Whitney U) with average ranks, so tied scores count one half.

    Not torchmetrics' ``binary_auroc``, which agrees on ties only to float32 precision (about
    1e-7: it accumulates the ROC curve in float32) and, for scores outside [0, 1] such as a
    predicted area in pixels, first applies a sigmoid that saturates large values into ties
    (areas 4000 and 30000 both become 1.0), which changes the AUC.

    Args:
        scores: Higher means "more likely positive", one per sample.
        labels: True for positives, one per sample.

    Returns:
        AUC in [0, 1]; NaN when the labels hold only one class (undefined).

    Raises:
        ValueError: lengths differ or a score is NaN.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) must have the same length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts + 1  # 1-based rank of each distinct score's first copy
    ranks = (first + (counts - 1) / 2.0)[inverse.ravel()]  # ties share their average rank
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def image_detection(
    predicted: Sequence[bool] | np.ndarray,
    has_defect: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
) -> dict[str, float]:
    """Image-level defect detection: "does this image have a defect?" as a yes/no decision.

    Args:
        predicted: Per image, whether the (post-processed) prediction is non-empty.
        has_defect: Per image, whether its ground-truth mask is non-empty.
        scores: Optional per-image score for the ROC AUC, e.g. the maximum probability or the
            predicted defect area.

    Returns:
        ``tp``, ``fp``, ``fn``, ``tn`` (image counts; positive = defective), ``precision``,
        ``recall``, ``specificity``, ``f1`` (``2tp / (2tp + fp + fn)``), ``accuracy`` and, with
        ``scores``, ``roc_auc``. A ratio whose denominator is 0 is NaN: precision when no
        image is predicted defective, recall (and AUC) when no image is defective,
        specificity (and AUC) when none is clean.
    """
    p = np.asarray(predicted, dtype=bool).ravel()
    y = np.asarray(has_defect, dtype=bool).ravel()
    if p.shape != y.shape:
        raise ValueError(
            f"predicted ({p.size}) and has_defect ({y.size}) must have the same length"
        )
    tp, fp = int((p & y).sum()), int((p & ~y).sum())
    fn, tn = int((~p & y).sum()), int((~p & ~y).sum())
    out = {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, p.size),
    }
    if scores is not None:
        out["roc_auc"] = roc_auc(scores, y)
    return out


def defect_counts(
    pred: np.ndarray,
    target: np.ndarray,
    iou_threshold: float = 0.5,
    connectivity: int = CONNECTIVITY,
) -> tuple[int, int, int, int]:
    """Match the connected components (separate defects) of one image's masks.

    A ground-truth component is *found* when some predicted component overlaps it with IoU >=
    ``iou_threshold``; a predicted component is *matched* when it overlaps some ground-truth
    component that well. Matching is not one-to-one: with a threshold <= 0.5 one large
    prediction may find two small neighbouring defects.

    Args:
        pred: Predicted mask (H, W), bool or {0, 1}.
        target: Ground-truth mask (H, W), bool or {0, 1}.
        iou_threshold: Minimum component IoU, in (0, 1].
        connectivity: 8 or 4 (pixel neighbourhood of a component).

    Returns:
        ``(n_true, found, n_pred, matched)``.
    """
    n_t, n_p, area_t, hit = _match(pred, target, iou_threshold, connectivity)
    if hit is None:
        return n_t, 0, n_p, 0
    return n_t, int(hit.any(1).sum()), n_p, int(hit.any(0).sum())


#: defects (ground-truth components) smaller than this many pixels count as small in the
#: evaluation's second recall: thin scratches and pits that squashing a strip erases
SMALL_DEFECT = 2000


def small_defect_counts(
    pred: np.ndarray,
    target: np.ndarray,
    below: int = SMALL_DEFECT,
    iou_threshold: float = 0.5,
    connectivity: int = CONNECTIVITY,
) -> tuple[int, int]:
    """``(n_small, found_small)``: the true defects under ``below`` pixels, and how many of
    them are found (matched as in :func:`defect_counts`)."""
    n_t, _, area_t, hit = _match(pred, target, iou_threshold, connectivity)
    small = area_t < below
    if hit is None:
        return int(small.sum()), 0
    return int(small.sum()), int((hit.any(1) & small).sum())


def _match(
    pred: np.ndarray, target: np.ndarray, iou_threshold: float, connectivity: int
) -> tuple[int, int, np.ndarray, np.ndarray | None]:
    """(n_true, n_pred, true component areas, (n_true, n_pred) hit matrix or None when either
    side has no component)."""
    import cv2  # numpy-only callers of the pixel metrics need not load OpenCV

    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must have the same shape")
    n_t, lab_t = cv2.connectedComponents(
        np.asarray(target, dtype=np.uint8), connectivity=connectivity
    )
    n_p, lab_p = cv2.connectedComponents(
        np.asarray(pred, dtype=np.uint8), connectivity=connectivity
    )
    n_t, n_p = n_t - 1, n_p - 1  # label 0 is the background
    area_t = np.bincount(lab_t.ravel(), minlength=n_t + 1)[1:]
    if n_t == 0 or n_p == 0:
        return n_t, n_p, area_t, None
    area_p = np.bincount(lab_p.ravel(), minlength=n_p + 1)[1:]
    both = (lab_t > 0) & (lab_p > 0)
    pair = (lab_t[both].astype(np.int64) - 1) * n_p + (lab_p[both] - 1)
    inter = np.bincount(pair, minlength=n_t * n_p).reshape(n_t, n_p)  # (n_true, n_pred)
    hit = inter >= iou_threshold * (area_t[:, None] + area_p[None, :] - inter)
    hit &= inter > 0
    return n_t, n_p, area_t, hit


def defect_scores(n_true: int, found: int, n_pred: int, matched: int) -> dict[str, float]:
    """Defect-level recall (share of true defects found) and precision (share of predicted
    defects that match one), from counts summed over images; NaN where there is nothing to count.
    """
    recall, precision = _ratio(found, n_true), _ratio(matched, n_pred)
    return {
        "n_true": int(n_true),
        "found": int(found),
        "n_pred": int(n_pred),
        "matched": int(matched),
        "recall": recall,
        "precision": precision,
        "f1": float("nan")
        if np.isnan(recall) or np.isnan(precision)
        else (2 * recall * precision / (recall + precision) if recall + precision else 0.0),
    }


def defect_detection(
    preds: Iterable[np.ndarray],
    targets: Iterable[np.ndarray],
    iou_threshold: float = 0.5,
    connectivity: int = CONNECTIVITY,
) -> dict[str, float]:
    """Defect-level recall and precision over images (see :func:`defect_counts`).

    Args:
        preds: Predicted masks, each (H, W).
        targets: Ground-truth masks, each (H, W), in the same order.
        iou_threshold: Minimum IoU for a predicted component to find a true one.
        connectivity: 8 or 4.

    Returns:
        ``n_true``, ``found``, ``n_pred``, ``matched``, ``recall`` (found / n_true),
        ``precision`` (matched / n_pred) and their harmonic mean ``f1``; NaN when a
        denominator is 0.
    """
    total = np.zeros(4, dtype=np.int64)
    for p, t in zip(preds, targets, strict=True):
        total += defect_counts(p, t, iou_threshold, connectivity)
    return defect_scores(*(int(v) for v in total))
