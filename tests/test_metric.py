"""steelseg.metric: IoU / Dice at a threshold (dataset-level) and per-image Dice (Kaggle rule);
steelseg.segmetrics: the same numbers accumulated over batches during training.

Hand-computed cases use 2x2 images and logits of +-4 (sigmoid 0.982 / 0.018), so which pixels
are predicted never depends on rounding; random cases are checked against plain numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steelseg.metric import dice, dice_per_image, iou, threshold_sweep
from steelseg.segmetrics import SegMetrics, confusion

HI, LO = 4.0, -4.0  # logits clearly above / below probability 0.5


def logits_of(pred: list) -> torch.Tensor:
    """(N, 1, H, W) logits predicting exactly the 1s of ``pred`` ((N, H, W) nested lists)."""
    p = torch.tensor(pred, dtype=torch.float32)[:, None]
    return torch.where(p > 0, torch.tensor(HI), torch.tensor(LO))


def masks_of(target: list) -> torch.Tensor:
    return torch.tensor(target, dtype=torch.float32)[:, None]


# Three images: a partial hit (tp 1, fp 1, fn 1), empty on empty, a false alarm on empty.
PRED = [[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]]
TARGET = [[[1, 0], [1, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]
# Totals: tp 1, fp 2, fn 1 -> IoU 1/4, Dice 2/5; per image Dice 1/2, 1 (Kaggle rule), 0.
EXPECTED = {"iou": 0.25, "dice": 0.4, "dice_per_image": 0.5}


# ----------------------------------------------------------------------------- numpy reference
def reference(probs: np.ndarray, target: np.ndarray, t: float) -> dict[str, float]:
    """The three metrics computed directly, pixel by pixel, in numpy."""
    pred = probs >= t
    tgt = target > 0.5
    tp = (pred & tgt).reshape(len(pred), -1).sum(1)
    fp = (pred & ~tgt).reshape(len(pred), -1).sum(1)
    fn = (~pred & tgt).reshape(len(pred), -1).sum(1)
    per_image = [
        1.0 if (2 * a + b + c) == 0 else 2 * a / (2 * a + b + c) for a, b, c in zip(tp, fp, fn)
    ]
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    return {
        "iou": TP / (TP + FP + FN) if TP + FP + FN else 1.0,
        "dice": 2 * TP / (2 * TP + FP + FN) if TP + FP + FN else 1.0,
        "dice_per_image": float(np.mean(per_image)),
    }


@pytest.fixture
def random_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, target) of 7 images 16x24 with blobs of defect, some images clean."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 1, 16, 24, generator=g) * 3
    target = (torch.rand(7, 1, 16, 24, generator=g) < 0.3).float()
    target[[1, 4]] = 0  # clean images, so the Kaggle rule is exercised
    logits[4] = -5  # ... one of them predicted clean too (counts 1)
    return logits, target


# ----------------------------------------------------------------------------- confusion
def test_confusion_counts_per_image() -> None:
    tp, fp, fn = confusion(logits_of(PRED), masks_of(TARGET))
    assert tp.tolist() == [1, 0, 0]
    assert fp.tolist() == [1, 0, 1]
    assert fn.tolist() == [1, 0, 0]


def test_confusion_threshold_is_inclusive_and_moves_the_cut() -> None:
    # probabilities 0.5 (logit 0), ~0.27 and ~0.73 on a mask that is all defect
    logits = torch.tensor([[[[0.0, -1.0], [1.0, 1.0]]]])
    target = torch.ones(1, 1, 2, 2)
    assert confusion(logits, target, 0.5)[0].item() == 3  # prob >= 0.5: 0.5 counts
    assert confusion(logits, target, 0.2)[0].item() == 4
    assert confusion(logits, target, 0.8)[0].item() == 0
    assert confusion(logits, target, 0.8)[2].item() == 4


# ----------------------------------------------------------------------------- functions
def test_hand_computed_values() -> None:
    tp, fp, fn = confusion(logits_of(PRED), masks_of(TARGET))
    assert iou(tp, fp, fn).item() == pytest.approx(EXPECTED["iou"])
    assert dice(tp, fp, fn).item() == pytest.approx(EXPECTED["dice"])
    assert dice_per_image(tp, fp, fn).tolist() == pytest.approx([0.5, 1.0, 0.0])


def test_iou_and_dice_are_micro_not_mean_of_images() -> None:
    # image 1: its 1 pixel found (IoU 1); image 2: tp 1, fp 2, fn 1 (IoU 1/4)
    pred = [[[1, 0], [0, 0]], [[1, 1], [1, 0]]]
    target = [[[1, 0], [0, 0]], [[1, 0], [0, 1]]]
    tp, fp, fn = confusion(logits_of(pred), masks_of(target))
    # totals tp 2, fp 2, fn 1: IoU 2/5 (the mean of per-image IoUs would be (1 + 1/4) / 2)
    assert iou(tp, fp, fn).item() == pytest.approx(2 / 5)
    assert dice(tp, fp, fn).item() == pytest.approx(4 / 7)
    assert dice_per_image(tp, fp, fn).tolist() == pytest.approx([1.0, 2 / 5])


def test_empty_prediction_on_empty_mask_counts_one() -> None:
    zeros = torch.zeros(3, dtype=torch.long)
    assert dice_per_image(zeros, zeros, zeros).tolist() == [1.0, 1.0, 1.0]
    # the whole dataset empty and predicted empty: IoU and Dice 1.0 by convention
    assert iou(zeros, zeros, zeros).item() == 1.0
    assert dice(zeros, zeros, zeros).item() == 1.0


def test_any_prediction_on_empty_mask_counts_zero() -> None:
    logits = logits_of([[[0, 0], [0, 1]]])  # one pixel predicted
    tp, fp, fn = confusion(logits, masks_of([[[0, 0], [0, 0]]]))
    assert dice_per_image(tp, fp, fn).tolist() == [0.0]
    assert iou(tp, fp, fn).item() == 0.0
    assert dice(tp, fp, fn).item() == 0.0


def test_missed_defect_counts_zero() -> None:
    tp, fp, fn = confusion(logits_of([[[0, 0], [0, 0]]]), masks_of([[[1, 1], [0, 0]]]))
    assert dice_per_image(tp, fp, fn).tolist() == [0.0]
    assert iou(tp, fp, fn).item() == 0.0


def test_perfect_prediction_scores_one() -> None:
    logits, target = logits_of(TARGET), masks_of(TARGET)
    tp, fp, fn = confusion(logits, target)
    assert iou(tp, fp, fn).item() == 1.0
    assert dice(tp, fp, fn).item() == 1.0
    assert dice_per_image(tp, fp, fn).tolist() == [1.0, 1.0, 1.0]


# ----------------------------------------------------------------------------- SegMetrics
def test_segmetrics_hand_computed() -> None:
    m = SegMetrics()
    m.update(logits_of(PRED), masks_of(TARGET))
    out = m.compute()
    assert set(out) == set(EXPECTED)
    for k, v in EXPECTED.items():
        assert out[k].item() == pytest.approx(v), k
        assert out[k].dtype == torch.float32


def test_segmetrics_accumulates_like_one_shot(random_batch) -> None:
    logits, target = random_batch
    whole = SegMetrics(threshold=0.4)
    whole.update(logits, target)
    parts = SegMetrics(threshold=0.4)
    for sl in (slice(0, 1), slice(1, 4), slice(4, 7)):  # uneven batches
        parts.update(logits[sl], target[sl])
    a, b = whole.compute(), parts.compute()
    for k in a:
        assert b[k].item() == pytest.approx(a[k].item(), abs=1e-6), k
    # ... and both equal the numpy computation
    ref = reference(logits.sigmoid().numpy(), target.numpy(), 0.4)
    for k, v in ref.items():
        assert a[k].item() == pytest.approx(v, abs=1e-6), k


def test_segmetrics_per_image_dice_is_not_batch_mean_of_means(random_batch) -> None:
    # batches of 1 and 6 images: a mean of batch means would weigh the lone image 6 times more
    logits, target = random_batch
    m = SegMetrics()
    m.update(logits[:1], target[:1])
    m.update(logits[1:], target[1:])
    ref = reference(logits.sigmoid().numpy(), target.numpy(), 0.5)
    assert m.compute()["dice_per_image"].item() == pytest.approx(ref["dice_per_image"], abs=1e-6)


def test_segmetrics_reset_forgets() -> None:
    m = SegMetrics()
    m.update(logits_of([[[1, 1], [1, 1]]]), masks_of([[[0, 0], [0, 0]]]))  # all wrong
    assert m.compute()["iou"].item() == 0.0
    m.reset()
    m.update(logits_of(TARGET), masks_of(TARGET))  # all right
    assert m.compute()["iou"].item() == 1.0
    assert m.compute()["dice_per_image"].item() == 1.0


def test_segmetrics_all_empty_dataset() -> None:
    m = SegMetrics()
    for _ in range(2):
        m.update(torch.full((2, 1, 4, 4), LO), torch.zeros(2, 1, 4, 4))
    out = m.compute()
    assert {k: v.item() for k, v in out.items()} == {"iou": 1.0, "dice": 1.0, "dice_per_image": 1.0}


def test_segmetrics_threshold_is_used() -> None:
    logits = torch.full((1, 1, 2, 2), 1.0)  # probability ~0.73 everywhere, on an all-defect mask
    target = torch.ones(1, 1, 2, 2)
    low, high = SegMetrics(threshold=0.6), SegMetrics(threshold=0.8)
    low.update(logits, target)
    high.update(logits, target)
    assert low.compute()["iou"].item() == 1.0
    assert high.compute()["iou"].item() == 0.0


# ----------------------------------------------------------------------------- threshold_sweep
def test_threshold_sweep_hand_computed() -> None:
    rows = threshold_sweep(logits_of(PRED).sigmoid(), masks_of(TARGET), [0.5])
    assert len(rows) == 1
    assert rows[0]["threshold"] == 0.5
    for k, v in EXPECTED.items():
        assert rows[0][k] == pytest.approx(v), k


def test_threshold_sweep_matches_numpy(random_batch) -> None:
    logits, target = random_batch
    probs = logits.sigmoid()
    thresholds = [0.1, 0.35, 0.5, 0.9]
    rows = threshold_sweep(probs, target, thresholds)
    assert [r["threshold"] for r in rows] == thresholds
    for row in rows:
        ref = reference(probs.numpy(), target.numpy(), row["threshold"])
        for k, v in ref.items():
            assert row[k] == pytest.approx(v, abs=1e-6), (row["threshold"], k)
        assert all(isinstance(v, float) for v in row.values())


def test_threshold_sweep_agrees_with_segmetrics(random_batch) -> None:
    logits, target = random_batch
    for t in (0.3, 0.5, 0.7):
        m = SegMetrics(threshold=t)
        m.update(logits, target)
        expected = {k: v.item() for k, v in m.compute().items()}
        (row,) = threshold_sweep(logits.sigmoid(), target, [t])
        for k, v in expected.items():
            assert row[k] == pytest.approx(v, abs=1e-6), (t, k)


def test_threshold_sweep_default_grid_and_inclusive_threshold() -> None:
    probs = torch.full((1, 1, 2, 2), 0.5)
    target = torch.ones(1, 1, 2, 2)
    rows = threshold_sweep(probs, target)
    assert [r["threshold"] for r in rows] == pytest.approx([0.05 * i for i in range(1, 20)])
    by_t = {round(r["threshold"], 2): r for r in rows}
    assert by_t[0.5]["iou"] == 1.0  # 0.5 >= 0.5: predicted
    assert by_t[0.55]["iou"] == 0.0
