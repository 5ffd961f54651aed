"""Every segmentation and detection metric of steelseg, computed in one place.

Tensor contract (see :mod:`steelseg.dataset`): logits ``(N, C, H, W)`` float, targets
``(N, C, H, W)`` in {0, 1}; C = 1 (merged defect classes) or one channel per class. Probabilities appear only here and at prediction time.

Pixel metrics go through one path: per-image counts (true positives, false positives, false
negatives; :func:`confusion`, :func:`mask_counts`, :func:`counts_at_thresholds`) are scored by
``segmentation_models_pytorch.metrics`` (smp) in float64:

* **IoU / Dice** are dataset-level ("micro"): the counts are summed over every pixel of every
  image, then divided once (:func:`iou`, :func:`dice`); 1.0 when there is nothing to find and
  nothing was found.
* **Per-image Dice** is each image's Dice (:func:`dice_per_image`), where an empty prediction on
  an empty mask counts 1 (the Kaggle competition's rule) and a non-empty prediction on an empty
  mask 0; its mean over images is the headline ``dice_per_image``.
* :func:`pixel_scores` gives all three (and the summed counts) from per-image counts,
  :func:`threshold_curve` / :func:`threshold_sweep` the same at every threshold, and
  :class:`SegMetrics` accumulates them during training (reduced correctly under DDP).

Detection metrics (image level: :func:`image_detection`, :func:`roc_auc`; defect level:
:func:`defect_counts`, :func:`defect_detection`) are plain numpy on full-resolution masks; no
library matches connected components, and :func:`roc_auc` stays exact rank-based code (see there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torchmetrics import Metric

from steelseg.config import HEADLINE, METRIC_NAMES  # noqa: F401 (HEADLINE: re-exported)

#: what :class:`SegMetrics` computes (``val/<name>``, ``test/<name>``; see steelseg.config)
NAMES = METRIC_NAMES
#: default thresholds of :func:`threshold_sweep`: 0.05, 0.10, ..., 0.95
SWEEP_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))

#: pixel counts: a numpy array, a tensor (any device) or a Python int
Counts = np.ndarray | torch.Tensor | int


# ----------------------------------------------------------------------------- counts
def confusion(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image true positives, false positives and false negatives (``sigmoid >= threshold``).

    Shape:
        logits, target: (N, 1, H, W). Returns three (N,) int64 tensors.
    """
    tp, fp, fn, _ = smp.metrics.get_stats(
        logits.sigmoid(), target.long(), mode="binary", threshold=threshold
    )  # each (N, 1)
    return tp[:, 0], fp[:, 0], fn[:, 0]


def class_confusion(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-(image, class) true positives, false positives and false negatives.

    Shape:
        logits, target: (N, C, H, W), one channel per class. Returns three (N, C) int64 tensors.
    """
    tp, fp, fn, _ = smp.metrics.get_stats(
        logits.sigmoid(), target.long(), mode="multilabel", threshold=threshold
    )
    return tp, fp, fn


def kaggle_dice(tp: Counts, fp: Counts, fn: Counts) -> float:
    """The Severstal competition's metric: mean Dice over (image, class) pairs, 1 where the
    prediction and the truth are both empty.

    Shape:
        tp, fp, fn: (N, C) counts of each image and class.
    """
    return float(np.mean(np.asarray(dice_per_image(*(np.asarray(c) for c in (tp, fp, fn))))))


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
# smp's scores are elementwise on tensors of counts; tn is not used by IoU or F1, so zeros stand
# in for it. Counts are scored in float64: a dataset's pixel counts exceed float32's 2**24.
def _float64(
    tp: Counts, fp: Counts, fn: Counts
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """The counts as float64 tensors (on the device of any tensor among them); whether any was."""
    tensors = [c for c in (tp, fp, fn) if isinstance(c, torch.Tensor)]
    device = tensors[0].device if tensors else None
    out = [
        c.detach().to(torch.float64)
        if isinstance(c, torch.Tensor)
        else torch.as_tensor(np.asarray(c), dtype=torch.float64, device=device)
        for c in (tp, fp, fn)
    ]
    if not out[0].shape == out[1].shape == out[2].shape:
        raise ValueError(
            f"tp, fp and fn must have the same shape, got {[tuple(c.shape) for c in out]}"
        )
    return out[0], out[1], out[2], bool(tensors)


def _returned(score: torch.Tensor, as_tensor: bool) -> torch.Tensor | np.ndarray | np.float64:
    """A tensor for tensor inputs, else numpy (an ``np.float64`` when 0-d)."""
    return score if as_tensor else score.cpu().numpy()[()]


def _micro(
    score_fn: Callable[..., torch.Tensor], tp: Counts, fp: Counts, fn: Counts
) -> torch.Tensor | np.float64:
    t, p, n, as_tensor = _float64(tp, fp, fn)
    score = score_fn(t, p, n, torch.zeros_like(t), reduction="micro", zero_division=1.0)
    # smp (0.6) applies zero_division to every reduction but "micro", which returns 0/0 = NaN
    # for an all-empty dataset; nothing to find and nothing found counts 1.0 here.
    return _returned(torch.nan_to_num(score, nan=1.0), as_tensor)


def iou(tp: Counts, fp: Counts, fn: Counts) -> torch.Tensor | np.float64:
    """Dataset-level IoU of summed counts (smp ``iou_score``, micro); 1.0 when all are empty.

    Shape:
        tp, fp, fn: any shape, the same for all, e.g. (N,) per image. Returns a 0-d float64
        tensor for tensor inputs, else an ``np.float64``.
    """
    return _micro(smp.metrics.iou_score, tp, fp, fn)


def dice(tp: Counts, fp: Counts, fn: Counts) -> torch.Tensor | np.float64:
    """Dataset-level Dice (F1) of summed counts (smp ``f1_score``, micro); 1.0 when all are empty.

    Shape:
        tp, fp, fn: any shape, the same for all, e.g. (N,) per image. Returns a 0-d float64
        tensor for tensor inputs, else an ``np.float64``.
    """
    return _micro(smp.metrics.f1_score, tp, fp, fn)


def dice_per_image(tp: Counts, fp: Counts, fn: Counts) -> torch.Tensor | np.ndarray:
    """Dice of each element (smp ``f1_score``, no reduction); 0/0 is 1 (Kaggle rule).

    An element is usually one image: an empty prediction on an empty mask scores 1, anything
    predicted on an empty mask 0. Elementwise, so any grid of counts works (the tuner's
    (areas, totals) grid of one image).

    Shape:
        tp, fp, fn: any shape, the same for all. Returns float64 of that shape: a tensor (on
        the inputs' device) for tensor inputs, else a numpy array (``np.float64`` when 0-d).
    """
    t, p, n, as_tensor = _float64(tp, fp, fn)
    score = smp.metrics.f1_score(t, p, n, torch.zeros_like(t), reduction="none", zero_division=1.0)
    return _returned(score, as_tensor)


def iou_per_image(tp: Counts, fp: Counts, fn: Counts) -> torch.Tensor | np.ndarray:
    """IoU of each element (smp ``iou_score``, no reduction); 0/0 is 1.

    On counts already summed over images (e.g. the tuner's (thresholds, areas, totals) sums)
    each element is the dataset-level IoU of that setting, equal to :func:`iou` of its images.

    Shape:
        tp, fp, fn: any shape, the same for all. Returns float64 of that shape: a tensor for
        tensor inputs, else a numpy array (``np.float64`` when 0-d).
    """
    t, p, n, as_tensor = _float64(tp, fp, fn)
    score = smp.metrics.iou_score(t, p, n, torch.zeros_like(t), reduction="none", zero_division=1.0)
    return _returned(score, as_tensor)


def pixel_scores(tp: Counts, fp: Counts, fn: Counts) -> dict[str, float]:
    """Dataset-level IoU / Dice and mean per-image Dice (Kaggle rule) from per-image counts.

    ``dice_per_image`` is smp's ``f1_score`` with ``reduction="micro-imagewise"`` (each image's
    Dice, then their mean); NaN when there is no image.

    Returns:
        ``iou``, ``dice``, ``dice_per_image`` (floats) and the summed ``tp``, ``fp``, ``fn``
        (ints).

    Shape:
        tp, fp, fn: (N,), one element per image (numpy or torch).
    """
    t, p, n, _ = _float64(tp, fp, fn)
    t, p, n = (c.reshape(-1, 1) for c in (t, p, n))  # smp's (images, classes)
    per_image = smp.metrics.f1_score(
        t, p, n, torch.zeros_like(t), reduction="micro-imagewise", zero_division=1.0
    )
    return {
        "iou": float(iou(t, p, n)),
        "dice": float(dice(t, p, n)),
        "dice_per_image": float(per_image),
        "tp": int(t.sum()),
        "fp": int(p.sum()),
        "fn": int(n.sum()),
    }


class SegMetrics(Metric):
    """Accumulates IoU, Dice and per-image Dice over batches (reduced correctly under DDP).

    The states are summed counts and the sum of per-image Dice (:func:`dice_per_image`), so
    the outputs equal :func:`pixel_scores` of all the images seen. With ``classes > 1`` these
    score the merged mask (a pixel is predicted defective when any class's probability reaches
    the threshold), and per-class IoU and Dice (``iou_c1``, ``dice_c1``, ...) and the
    competition's :func:`kaggle_dice` come on top.

    Example:
        >>> m = SegMetrics(threshold=0.5)
        >>> m.update(logits, masks)          # per batch
        >>> m.compute()                      # {"iou": ..., "dice": ..., "dice_per_image": ...}
    """

    full_state_update = False

    def __init__(self, threshold: float = 0.5, classes: int = 1) -> None:
        super().__init__()
        self.threshold = threshold
        self.classes = int(classes)
        for name in ("tp", "fp", "fn", "dice_sum", "n_images"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        if self.classes > 1:
            for name in ("class_tp", "class_fp", "class_fn", "pair_dice_sum"):
                zeros = torch.zeros(self.classes, dtype=torch.float64)
                self.add_state(name, default=zeros, dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch.

        Shape:
            logits, target: (N, C, H, W), C = ``classes``.
        """
        logits = logits.detach()
        if self.classes > 1:
            tp, fp, fn = class_confusion(logits, target, self.threshold)  # (N, C) each
            self.class_tp += tp.sum(0)
            self.class_fp += fp.sum(0)
            self.class_fn += fn.sum(0)
            self.pair_dice_sum += dice_per_image(tp, fp, fn).sum(0)
            # merged: the highest logit of a pixel reaches the threshold iff any class does
            logits, target = logits.amax(1, keepdim=True), target.amax(1, keepdim=True)
        tp, fp, fn = confusion(logits, target, self.threshold)
        self.tp += tp.sum()
        self.fp += fp.sum()
        self.fn += fn.sum()
        self.dice_sum += dice_per_image(tp, fp, fn).sum()
        self.n_images += tp.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        """``iou``, ``dice``, ``dice_per_image`` (and per class, ``kaggle_dice``), each 0-d
        float32."""
        n = self.n_images.clamp(min=1)
        out = {
            "iou": iou(self.tp, self.fp, self.fn).float(),
            "dice": dice(self.tp, self.fp, self.fn).float(),
            "dice_per_image": (self.dice_sum / n).float(),
        }
        if self.classes > 1:
            out["kaggle_dice"] = (self.pair_dice_sum.sum() / (n * self.classes)).float()
            for c in range(self.classes):
                t, p, f = self.class_tp[c], self.class_fp[c], self.class_fn[c]
                out[f"iou_c{c + 1}"] = iou(t, p, f).float()
                out[f"dice_c{c + 1}"] = dice(t, p, f).float()
        return out


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
    probs: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    thresholds: Sequence[float] | None = None,
) -> list[dict[str, float]]:
    """IoU, Dice and per-image Dice at each threshold, for choosing one on validation data.

    :func:`counts_at_thresholds` of each image, scored by :func:`threshold_curve`.

    Args:
        probs: Probabilities (after sigmoid).
        target: Masks in {0, 1}.
        thresholds: Thresholds to try, in any order; default 0.05, 0.10, ..., 0.95.

    Returns:
        One dict per threshold, in the given order: ``threshold``, ``iou``, ``dice``,
        ``dice_per_image``.

    Shape:
        probs, target: (N, 1, H, W) or (N, H, W).
    """
    thresholds = list(SWEEP_THRESHOLDS if thresholds is None else thresholds)
    probs, target = (
        x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        for x in (probs, target)
    )
    distinct, back = np.unique(np.asarray(thresholds, dtype=np.float64), return_inverse=True)
    counts = np.zeros((len(probs), 3, len(distinct)), dtype=np.int64)  # (N, 3, distinct T)
    for i, (p, m) in enumerate(zip(probs, target)):
        counts[i] = counts_at_thresholds(p, m, distinct)
    counts = counts[:, :, back.ravel()]  # (N, 3, T): back in the caller's order
    return threshold_curve(counts[:, 0], counts[:, 1], counts[:, 2], thresholds)


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
    pred: np.ndarray, target: np.ndarray, iou_threshold: float = 0.5, connectivity: int = 8
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
    connectivity: int = 8,
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
    connectivity: int = 8,
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
