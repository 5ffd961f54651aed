"""SegMetrics: the training metric, IoU, Dice and per-image Dice accumulated over batches.

The torch side of :mod:`steelseg.metric`. Per batch, smp's ``get_stats`` counts each image's
true positives, false positives and false negatives on the batch's device, and smp's
``f1_score`` gives each image's Dice (Kaggle rule); the sums are torchmetrics states, reduced
correctly under DDP. Once per epoch the summed counts are scored by :mod:`steelseg.metric`, so
training logs the numbers evaluation reports.

Tensor contract (see :mod:`steelseg.dataset`): logits ``(N, C, H, W)`` float, targets
``(N, C, H, W)`` in {0, 1}; C = 1 (merged defect classes) or one channel per class.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torchmetrics import Metric

from steelseg import metric


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


def _dice_per_image(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """:func:`steelseg.metric.dice_per_image` on the counts' device, in float64 (smp
    ``f1_score``, no reduction; 0/0 is 1)."""
    t, p, n = (c.to(torch.float64) for c in (tp, fp, fn))
    return smp.metrics.f1_score(t, p, n, torch.zeros_like(t), reduction="none", zero_division=1.0)


class SegMetrics(Metric):
    """Accumulates IoU, Dice and per-image Dice over batches (reduced correctly under DDP).

    The states are summed counts and the sum of per-image Dice, so the outputs equal
    :func:`steelseg.metric.pixel_scores` of all the images seen. With ``classes > 1`` these
    score the merged mask (a pixel is predicted defective when any class's probability reaches
    the threshold), and per-class IoU and Dice (``iou_c1``, ``dice_c1``, ...) and the
    competition's :func:`steelseg.metric.kaggle_dice` come on top.

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
            self.pair_dice_sum += _dice_per_image(tp, fp, fn).sum(0)
            # merged: the highest logit of a pixel reaches the threshold iff any class does
            logits, target = logits.amax(1, keepdim=True), target.amax(1, keepdim=True)
        tp, fp, fn = confusion(logits, target, self.threshold)
        self.tp += tp.sum()
        self.fp += fp.sum()
        self.fn += fn.sum()
        self.dice_sum += _dice_per_image(tp, fp, fn).sum()
        self.n_images += tp.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        """``iou``, ``dice``, ``dice_per_image`` (and per class, ``kaggle_dice``), each 0-d
        float32 on the metric's device."""
        n = max(self.n_images.item(), 1.0)
        counts = [c.item() for c in (self.tp, self.fp, self.fn)]
        out = {
            "iou": metric.iou(*counts),
            "dice": metric.dice(*counts),
            "dice_per_image": self.dice_sum.item() / n,
        }
        if self.classes > 1:
            out["kaggle_dice"] = self.pair_dice_sum.sum().item() / (n * self.classes)
            per_class = [c.cpu() for c in (self.class_tp, self.class_fp, self.class_fn)]
            # each class's counts are summed over images: its dataset-level IoU and Dice
            ious, dices = metric.iou_per_image(*per_class), metric.dice_per_image(*per_class)
            for c in range(self.classes):
                out[f"iou_c{c + 1}"], out[f"dice_c{c + 1}"] = ious[c], dices[c]
        device = self.tp.device
        return {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in out.items()}
