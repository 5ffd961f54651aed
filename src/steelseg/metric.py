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

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
from torchmetrics import Metric


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
