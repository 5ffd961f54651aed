"""Segmentation metrics at a threshold: dataset-level IoU/Dice and per-image Dice (Kaggle rule).

Tensor contract (see :mod:`steelseg.dataset`): logits ``(N, 1, H, W)`` float, targets
``(N, 1, H, W)`` in {0, 1}. Probabilities appear only here and at prediction time.

* **IoU / Dice** are dataset-level ("micro"): true/false positives and false negatives are
  summed over every pixel of every image, then divided once.
* **Per-image Dice** is the mean over images of each image's Dice, where an empty prediction on
  an empty mask counts as 1 (the Kaggle competition's rule) and a non-empty prediction on an
  empty mask as 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torchmetrics import Metric

#: what :class:`SegMetrics` computes; logged as ``val/<name>`` and ``test/<name>``
NAMES = ("iou", "dice", "dice_per_image")
#: the headline numbers of a run (printed by steelseg-train, the first columns of a sweep summary)
HEADLINE = tuple(f"{split}/{name}" for split in ("val", "test") for name in NAMES)


def confusion(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image true positives, false positives and false negatives.

    Shape:
        logits, target: (N, 1, H, W). Returns three (N,) int64 tensors.
    """
    tp, fp, fn, _ = smp.metrics.get_stats(
        logits.sigmoid(), target.long(), mode="binary", threshold=threshold
    )  # each (N, 1)
    return tp[:, 0], fp[:, 0], fn[:, 0]


def iou(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """Dataset-level IoU from summed counts; 1.0 when there is nothing to find and nothing found."""
    tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    denom = tp + fp + fn
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.ones((), device=tp.device))


def dice(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """Dataset-level Dice (F1) from summed counts; 1.0 when both are empty."""
    tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones((), device=tp.device))


def dice_per_image(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """Dice of each image; an empty prediction on an empty mask is 1 (Kaggle rule).

    Shape:
        tp, fp, fn: (N,). Returns (N,) float.
    """
    denom = (2 * tp + fp + fn).float()
    return torch.where(denom > 0, 2 * tp.float() / denom.clamp(min=1), torch.ones_like(denom))


class SegMetrics(Metric):
    """Accumulates IoU, Dice and per-image Dice over batches (reduced correctly under DDP).

    Example:
        >>> m = SegMetrics(threshold=0.5)
        >>> m.update(logits, masks)          # per batch
        >>> m.compute()                      # {"iou": ..., "dice": ..., "dice_per_image": ...}
    """

    full_state_update = False

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        for name in ("tp", "fp", "fn", "dice_sum", "n_images"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        tp, fp, fn = confusion(logits.detach(), target, self.threshold)
        self.tp += tp.sum()
        self.fp += fp.sum()
        self.fn += fn.sum()
        self.dice_sum += dice_per_image(tp, fp, fn).sum()
        self.n_images += tp.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "iou": iou(self.tp, self.fp, self.fn).float(),
            "dice": dice(self.tp, self.fp, self.fn).float(),
            "dice_per_image": (self.dice_sum / self.n_images.clamp(min=1)).float(),
        }


def threshold_sweep(
    probs: torch.Tensor, target: torch.Tensor, thresholds: Sequence[float] | None = None
) -> list[dict[str, float]]:
    """IoU, Dice and per-image Dice at each threshold, for choosing one on validation data.

    Args:
        probs: Probabilities (after sigmoid), (N, 1, H, W).
        target: Masks in {0, 1}, (N, 1, H, W).
        thresholds: Thresholds to try; default 0.05, 0.10, ..., 0.95.

    Returns:
        One dict per threshold: ``threshold``, ``iou``, ``dice``, ``dice_per_image``.
    """
    if thresholds is None:
        thresholds = [round(0.05 * i, 2) for i in range(1, 20)]
    target = target.bool()
    rows = []
    for t in thresholds:
        pred = probs >= t
        tp = (pred & target).flatten(1).sum(1)
        fp = (pred & ~target).flatten(1).sum(1)
        fn = (~pred & target).flatten(1).sum(1)
        rows.append(
            {
                "threshold": float(t),
                "iou": float(iou(tp, fp, fn)),
                "dice": float(dice(tp, fp, fn)),
                "dice_per_image": float(dice_per_image(tp, fp, fn).mean()),
            }
        )
    return rows


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
    if n_t == 0 or n_p == 0:
        return n_t, 0, n_p, 0
    area_t = np.bincount(lab_t.ravel(), minlength=n_t + 1)[1:]
    area_p = np.bincount(lab_p.ravel(), minlength=n_p + 1)[1:]
    both = (lab_t > 0) & (lab_p > 0)
    pair = (lab_t[both].astype(np.int64) - 1) * n_p + (lab_p[both] - 1)
    inter = np.bincount(pair, minlength=n_t * n_p).reshape(n_t, n_p)  # (n_true, n_pred)
    hit = inter >= iou_threshold * (area_t[:, None] + area_p[None, :] - inter)
    hit &= inter > 0
    return n_t, int(hit.any(1).sum()), n_p, int(hit.any(0).sum())


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
