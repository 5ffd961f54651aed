"""steelseg.metric's one metric path gives smp.metrics' numbers and those of the hand-written
formulas it replaced.

steelseg.metric is numpy; every score it shares with smp.metrics (iou_score, f1_score, get_stats)
is pinned to smp here, bit for bit where both compute in float64. The old formulas
(steelseg.metric before it went through smp, evaluate.pixel_scores and Scorer.add,
tune.GridScorer, predict.four_panel, evaluate.counts_at_thresholds, the rank-based roc_auc) are
copied below as references. Numbers computed in float64 or Python floats must agree to 1e-12;
the old torch functions computed in float32, so against them the tolerance is float32's relative
epsilon. SegMetrics (steelseg.segmetrics) must log the numbers it logged when it scored its
counts with smp on tensors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from steelseg import metric
from steelseg.metric import (
    counts_at_thresholds,
    dice,
    dice_per_image,
    iou,
    iou_per_image,
    kaggle_dice,
    mask_counts,
    pixel_scores,
    roc_auc,
    threshold_curve,
    threshold_sweep,
)
from steelseg.segmetrics import SegMetrics, confusion

EPS32 = float(torch.finfo(torch.float32).eps)  # relative tolerance against float32 results
THRESHOLDS = [0.1, 0.3, 0.45, 0.5, 0.7, 0.9]


# ----------------------------------------------------------------------------- old formulas
def old_iou_t(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    denom = tp + fp + fn
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.ones((), device=tp.device))


def old_dice_t(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones((), device=tp.device))


def old_dice_per_image_t(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    denom = (2 * tp + fp + fn).float()
    return torch.where(denom > 0, 2 * tp.float() / denom.clamp(min=1), torch.ones_like(denom))


def old_pixel_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, float]:
    """evaluate.pixel_scores over the old torch functions."""
    t, p, n = (torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in (tp, fp, fn))
    return {
        "iou": float(old_iou_t(t, p, n)),
        "dice": float(old_dice_t(t, p, n)),
        "dice_per_image": float(old_dice_per_image_t(t, p, n).float().mean())
        if len(t)
        else math.nan,
        "tp": int(t.sum()),
        "fp": int(p.sum()),
        "fn": int(n.sum()),
    }


def old_scorer_dice(tp: int, fp: int, fn: int) -> float:
    """evaluate.Scorer.add's per-image Dice (Python floats)."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def old_python_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, float]:
    """The same three numbers in plain Python float64 arithmetic."""
    T, P, N = int(tp.sum()), int(fp.sum()), int(fn.sum())
    return {
        "iou": T / (T + P + N) if T + P + N else 1.0,
        "dice": 2 * T / (2 * T + P + N) if T + P + N else 1.0,
        "dice_per_image": float(np.mean([old_scorer_dice(*c) for c in zip(tp, fp, fn)]))
        if len(tp)
        else math.nan,
    }


def old_grid_dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """tune.GridScorer.add's per-image Dice over an (A, M) grid."""
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)


def old_grid_iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """tune.GridScorer.rows' IoU of summed counts."""
    union = tp + fp + fn
    return np.where(union > 0, tp / np.maximum(union, 1), 1.0)


def old_four_panel_dice(mask: np.ndarray, truth: np.ndarray) -> float:
    m, t = mask.astype(bool), truth.astype(bool)
    inter, total = int((m & t).sum()), int(m.sum() + t.sum())
    return 1.0 if total == 0 else 2 * inter / total


def old_threshold_sweep(
    probs: torch.Tensor, target: torch.Tensor, thresholds: list[float]
) -> list[dict[str, float]]:
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
                "iou": float(old_iou_t(tp, fp, fn)),
                "dice": float(old_dice_t(tp, fp, fn)),
                "dice_per_image": float(old_dice_per_image_t(tp, fp, fn).mean()),
            }
        )
    return rows


def old_counts_at_thresholds(
    prob: np.ndarray, target: np.ndarray, thresholds: list[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(thresholds, dtype=np.float64)
    idx = np.searchsorted(t, prob.ravel(), side="right")
    target = target.ravel().astype(bool)
    ge_all = np.cumsum(np.bincount(idx, minlength=len(t) + 1)[::-1])[::-1][1:]
    tp = np.cumsum(np.bincount(idx[target], minlength=len(t) + 1)[::-1])[::-1][1:]
    return tp, ge_all - tp, int(target.sum()) - tp


def old_roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts + 1
    ranks = (first + (counts - 1) / 2.0)[inverse.ravel()]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def smp_score(name: str, tp, fp, fn, reduction: str) -> np.ndarray:
    """smp.metrics' ``name`` (iou_score, f1_score) of counts, in float64, 0/0 counted 1."""
    t, p, n = (torch.as_tensor(np.asarray(c), dtype=torch.float64) for c in (tp, fp, fn))
    fn_ = getattr(smp.metrics, name)
    return fn_(t, p, n, torch.zeros_like(t), reduction=reduction, zero_division=1.0).numpy()


# ----------------------------------------------------------------------------- fixed masks
N_IMAGES = 40


@pytest.fixture(scope="module")
def masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs float32, pred bool at 0.5, target bool), each (40, 12, 20), with every kind of image.

    Images 0-4 empty/empty, 5-9 empty prediction on a defect, 10-14 a prediction on a clean
    image, 15-17 perfect, the rest random overlaps.
    """
    rng = np.random.default_rng(20240611)
    probs = rng.random((N_IMAGES, 12, 20)).astype(np.float32)
    target = rng.random((N_IMAGES, 12, 20)) < rng.uniform(0.05, 0.6, (N_IMAGES, 1, 1))
    target[0:5] = False
    probs[0:10] = rng.random((10, 12, 20)).astype(np.float32) * 0.4  # nothing reaches 0.5
    target[10:15] = False
    probs[10:15, 3:6, 4:9] = 0.95  # a false alarm on a clean image
    probs[15:18] = np.where(target[15:18], 0.99, 0.01).astype(np.float32)
    probs[np.abs(probs - 0.5) < 1e-3] = 0.6  # the logits of the tests must not straddle 0.5
    return probs, probs >= 0.5, target


@pytest.fixture(scope="module")
def counts(masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image tp, fp, fn at 0.5, int64 (40,)."""
    _, pred, target = masks
    return tuple(
        np.array(c, dtype=np.int64) for c in zip(*(mask_counts(p, t) for p, t in zip(pred, target)))
    )


def test_fixture_has_every_kind_of_image(counts) -> None:
    tp, fp, fn = counts
    assert ((tp + fp + fn) == 0).sum() >= 5  # empty on empty: Kaggle rule 1
    assert ((tp + fp == 0) & (fn > 0)).sum() >= 5  # missed defect: 0
    assert ((tp + fn == 0) & (fp > 0)).sum() >= 5  # false alarm on a clean image: 0
    assert ((tp > 0) & (fp + fn == 0)).sum() >= 3  # perfect: 1


# ----------------------------------------------------------------------------- pixel scores
def test_mask_counts_match_confusion(masks, counts) -> None:
    probs, _, target = masks
    logits = torch.logit(torch.from_numpy(probs).double()).float()[:, None]
    tp, fp, fn = confusion(logits, torch.from_numpy(target).float()[:, None], 0.5)
    # sigmoid(logit(p)) may round across 0.5 only for p within float32 eps of it; none here
    assert not np.any(np.abs(probs - 0.5) < 1e-3)
    for new, old in zip((tp, fp, fn), counts):
        assert new.tolist() == old.tolist()


def test_pixel_scores_equal_old_formulas(counts) -> None:
    tp, fp, fn = counts
    got = pixel_scores(tp, fp, fn)
    exact = old_python_scores(tp, fp, fn)
    for k, v in exact.items():
        assert got[k] == pytest.approx(v, rel=0, abs=1e-12), k
    old = old_pixel_scores(tp, fp, fn)  # float32 torch
    for k in ("iou", "dice", "dice_per_image"):
        assert got[k] == pytest.approx(old[k], rel=4 * EPS32), k
    assert (got["tp"], got["fp"], got["fn"]) == (old["tp"], old["fp"], old["fn"])
    assert all(type(got[k]) is float for k in ("iou", "dice", "dice_per_image"))
    assert all(type(got[k]) is int for k in ("tp", "fp", "fn"))


def test_pixel_scores_per_image_dice_is_smp_micro_imagewise(counts) -> None:
    tp, fp, fn = counts
    lib = smp_score("f1_score", *(c[:, None] for c in counts), "micro-imagewise")
    # the same per-image Dice, averaged in another summation order
    assert pixel_scores(tp, fp, fn)["dice_per_image"] == pytest.approx(float(lib), rel=1e-14)
    assert pixel_scores(tp, fp, fn)["dice_per_image"] == pytest.approx(
        float(dice_per_image(tp, fp, fn).mean()), abs=1e-12
    )


def test_pixel_scores_of_cpu_tensors_and_numpy_agree(counts) -> None:
    a = pixel_scores(*counts)
    b = pixel_scores(*(torch.from_numpy(c) for c in counts))
    assert a == b


def test_pixel_scores_degenerate_datasets() -> None:
    zeros = np.zeros(4, dtype=np.int64)
    assert pixel_scores(zeros, zeros, zeros) == {
        "iou": 1.0,
        "dice": 1.0,
        "dice_per_image": 1.0,
        "tp": 0,
        "fp": 0,
        "fn": 0,
    }
    none = pixel_scores(np.array([], np.int64), np.array([], np.int64), np.array([], np.int64))
    old = old_pixel_scores(*(np.array([], np.int64) for _ in range(3)))
    assert none["iou"] == old["iou"] == 1.0 and none["dice"] == old["dice"] == 1.0
    assert math.isnan(none["dice_per_image"]) and math.isnan(old["dice_per_image"])
    with pytest.raises(ValueError, match="same shape"):
        pixel_scores(zeros, zeros, zeros[:3])


def test_iou_and_dice_equal_old_formulas(counts) -> None:
    tp, fp, fn = counts
    tensors = [torch.from_numpy(c) for c in counts]
    for new, old in ((iou, old_iou_t), (dice, old_dice_t)):
        got = new(tp, fp, fn)
        assert isinstance(got, np.float64)
        assert got == pytest.approx(old(*tensors).item(), rel=4 * EPS32)
        assert new(*tensors) == got  # CPU tensors are counts too
    exact = old_python_scores(tp, fp, fn)
    assert iou(tp, fp, fn) == pytest.approx(exact["iou"], rel=0, abs=1e-12)
    assert dice(tp, fp, fn) == pytest.approx(exact["dice"], rel=0, abs=1e-12)


def test_dice_per_image_equals_old_formulas(counts) -> None:
    tp, fp, fn = counts
    got = dice_per_image(tp, fp, fn)
    assert isinstance(got, np.ndarray) and got.shape == (N_IMAGES,) and got.dtype == np.float64
    exact = [old_scorer_dice(*c) for c in zip(tp.tolist(), fp.tolist(), fn.tolist())]
    assert got.tolist() == pytest.approx(exact, rel=0, abs=1e-12)
    old = old_dice_per_image_t(*(torch.from_numpy(c) for c in counts))
    assert got.tolist() == pytest.approx(old.tolist(), rel=4 * EPS32)
    # the Kaggle rule and its counterparts, image by image
    assert np.all(got[(tp + fp + fn) == 0] == 1.0)
    assert np.all(got[(tp == 0) & (fp + fn > 0)] == 0.0)


def test_dice_per_image_on_the_tuner_grid_equals_its_formula() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        tp = rng.integers(0, 40, (7, 8))
        fp = rng.integers(0, 40, (7, 8))
        fn = rng.integers(0, 40, (7, 8))
        zero = rng.random((7, 8)) < 0.2  # some grid points empty on empty
        tp, fp, fn = (np.where(zero, 0, c) for c in (tp, fp, fn))
        fp[0] = 0
        tp[0] = 0  # a row predicted empty on a defect (or on nothing)
        got = dice_per_image(tp, fp, fn)
        assert got.shape == (7, 8)
        np.testing.assert_array_equal(got, old_grid_dice(tp, fp, fn))


def test_iou_per_image_on_summed_grid_equals_tuner_and_dataset_iou(counts) -> None:
    rng = np.random.default_rng(2)
    tp, fp, fn = (rng.integers(0, 500, (3, 7, 8)) for _ in range(3))
    tp[0, 0, 0] = fp[0, 0, 0] = fn[0, 0, 0] = 0
    got = iou_per_image(tp, fp, fn)
    np.testing.assert_array_equal(got, old_grid_iou(tp, fp, fn))
    assert got[0, 0, 0] == 1.0
    # per-image IoU of the dataset totals is the dataset-level IoU
    totals = [c.sum() for c in counts]
    assert float(iou_per_image(*totals)) == pytest.approx(float(iou(*counts)), abs=1e-15)


def test_four_panel_dice_from_mask_counts(masks) -> None:
    _, pred, target = masks
    for p, t in zip(pred, target):
        assert float(dice_per_image(*mask_counts(p, t))) == pytest.approx(
            old_four_panel_dice(p, t), rel=0, abs=1e-12
        )
    with pytest.raises(ValueError, match="same shape"):
        mask_counts(pred[0], target[0, :5])


# ----------------------------------------------------------------------------- smp.metrics pins
def test_scores_are_smp_metrics_bit_for_bit(counts) -> None:
    tp, fp, fn = counts
    assert iou(tp, fp, fn) == smp_score("iou_score", tp, fp, fn, "micro")
    assert dice(tp, fp, fn) == smp_score("f1_score", tp, fp, fn, "micro")
    rng = np.random.default_rng(5)
    grid = [rng.integers(0, 3000, (3, 7, 8)) for _ in range(3)]  # e.g. the tuner's grid
    for c in grid:
        c[rng.random((3, 7, 8)) < 0.2] = 0  # with 0/0 points
    np.testing.assert_array_equal(dice_per_image(*grid), smp_score("f1_score", *grid, "none"))
    np.testing.assert_array_equal(iou_per_image(*grid), smp_score("iou_score", *grid, "none"))
    big = [np.array([3 * 2**40, 2**41 + 1]), np.array([7, 2**30]), np.array([2**33, 5])]
    assert iou(*big) == smp_score("iou_score", *big, "micro")  # beyond float32's 2**24
    # smp's micro reduction gives 0/0 = NaN for an all-empty dataset; ours counts it 1
    zeros = np.zeros(3, dtype=np.int64)
    assert np.isnan(smp_score("iou_score", zeros, zeros, zeros, "micro"))
    assert iou(zeros, zeros, zeros) == dice(zeros, zeros, zeros) == 1.0


def test_kaggle_dice_is_smp_macro_imagewise() -> None:
    rng = np.random.default_rng(6)
    tp, fp, fn = (rng.integers(0, 50, (30, 4)) for _ in range(3))
    for c in (tp, fp, fn):
        c[rng.random((30, 4)) < 0.5] = 0  # many empty (image, class) pairs
    lib = smp_score("f1_score", tp, fp, fn, "macro-imagewise")
    assert kaggle_dice(tp, fp, fn) == pytest.approx(float(lib), rel=1e-14)


def test_counts_are_smp_get_stats(masks) -> None:
    probs, pred, target = masks
    t = torch.from_numpy(target.astype(np.int64))[:, None]  # smp's (N, 1, H, W)
    stats = smp.metrics.get_stats(torch.from_numpy(pred.astype(np.int64))[:, None], t, "binary")
    assert [list(c) for c in zip(*(mask_counts(p, m) for p, m in zip(pred, target)))] == [
        s.ravel().tolist() for s in stats[:3]
    ]
    prob_t = torch.from_numpy(probs)[:, None]
    at = np.stack([np.stack(counts_at_thresholds(p, m, THRESHOLDS)) for p, m in zip(probs, target)])
    for i, th in enumerate(THRESHOLDS):  # (N, 3, T): smp thresholds float32 probabilities at th
        stats = smp.metrics.get_stats(prob_t, t, mode="binary", threshold=th)
        assert at[:, :, i].T.tolist() == [s.ravel().tolist() for s in stats[:3]], th


def old_segmetrics_score(name: str, *counts: torch.Tensor) -> torch.Tensor:
    """SegMetrics.compute's old IoU or Dice: smp (micro) of its float64 states, as float32."""
    z = torch.zeros_like(counts[0])
    score = getattr(smp.metrics, name)(*counts, z, reduction="micro", zero_division=1.0)
    return torch.nan_to_num(score, nan=1.0).float()


def test_segmetrics_logs_the_numbers_smp_gave_it(masks) -> None:
    """compute() scores the states with steelseg.metric; before, with smp on tensors."""
    probs, _, target = masks
    logits = torch.logit(torch.from_numpy(probs).double()).float()[:, None]
    rng = np.random.default_rng(7)
    class_logits = torch.from_numpy(rng.normal(0, 3, (N_IMAGES, 3, 12, 20))).float()
    class_target = torch.from_numpy(rng.random((N_IMAGES, 3, 12, 20)) < 0.2).float()
    class_target[:8] = 0
    for m, x, y in (
        (SegMetrics(0.5), logits, torch.from_numpy(target).float()[:, None]),
        (SegMetrics(0.4, classes=3), class_logits, class_target),
    ):
        for sl in (slice(0, 7), slice(7, 30), slice(30, N_IMAGES)):
            m.update(x[sl], y[sl])
        out = m.compute()
        n = m.n_images.clamp(min=1)
        want = {
            "iou": old_segmetrics_score("iou_score", m.tp, m.fp, m.fn),
            "dice": old_segmetrics_score("f1_score", m.tp, m.fp, m.fn),
            "dice_per_image": (m.dice_sum / n).float(),
        }
        if m.classes > 1:
            want["kaggle_dice"] = (m.pair_dice_sum.sum() / (n * m.classes)).float()
            for c in range(m.classes):
                counts = (m.class_tp[c], m.class_fp[c], m.class_fn[c])
                want[f"iou_c{c + 1}"] = old_segmetrics_score("iou_score", *counts)
                want[f"dice_c{c + 1}"] = old_segmetrics_score("f1_score", *counts)
        assert list(out) == list(want)
        for k, v in want.items():
            assert out[k].dtype == torch.float32 and out[k].shape == ()
            assert out[k].item() == v.item(), k


def test_segmetrics_equals_pixel_scores(masks, counts) -> None:
    probs, _, target = masks
    logits = torch.logit(torch.from_numpy(probs).double()).float()[:, None]
    m = SegMetrics(threshold=0.5)
    for sl in (slice(0, 7), slice(7, 30), slice(30, N_IMAGES)):
        m.update(logits[sl], torch.from_numpy(target[sl]).float()[:, None])
    out = m.compute()
    ref = pixel_scores(*counts)
    for k in metric.NAMES:
        assert out[k].dtype == torch.float32
        assert out[k].item() == pytest.approx(ref[k], rel=EPS32), k


# ----------------------------------------------------------------------------- threshold curve
def test_counts_at_thresholds_equal_old_on_float64(masks) -> None:
    probs, _, target = masks
    for p, t in zip(probs.astype(np.float64), target):
        for new, old in zip(
            counts_at_thresholds(p, t, THRESHOLDS), old_counts_at_thresholds(p, t, THRESHOLDS)
        ):
            assert new.dtype == np.int64
            np.testing.assert_array_equal(new, old)


def test_counts_at_thresholds_are_prob_ge_t_at_probs_precision() -> None:
    # float32 values exactly at float32(t) sit below the float64 threshold: `prob >= t` (numpy
    # and torch compare a float32 array at float32) counts them, the old float64 search did not
    thresholds = [0.1, 0.35, 0.7]
    prob = np.array([[np.float32(0.35), np.float32(0.7), 0.2, 0.05, np.nan]], dtype=np.float32)
    target = np.array([[True, False, True, False, True]])
    tp, fp, fn = counts_at_thresholds(prob, target, thresholds)
    for i, t in enumerate(thresholds):
        pred = prob >= t
        assert tp[i] == (pred & target).sum() and fp[i] == (pred & ~target).sum()
        assert fn[i] == (~pred & target).sum()
        assert (torch.from_numpy(prob) >= t).sum().item() == pred.sum()
    assert tp.tolist() == [2, 1, 0]  # the NaN pixel is never predicted
    assert old_counts_at_thresholds(prob, target, thresholds)[0].tolist() != tp.tolist()
    with pytest.raises(ValueError, match="increasing"):
        counts_at_thresholds(prob, target, [0.5, 0.2])
    with pytest.raises(ValueError, match="increasing"):
        counts_at_thresholds(prob, target, [0.5, 0.5 + 1e-12])  # one float32 threshold
    with pytest.raises(ValueError, match="same shape"):
        counts_at_thresholds(prob, target[:, :3], thresholds)


def test_threshold_sweep_equals_old(masks) -> None:
    probs, _, target = masks
    p, t = torch.from_numpy(probs)[:, None], torch.from_numpy(target).float()[:, None]
    got = threshold_sweep(p, t, THRESHOLDS)
    old = old_threshold_sweep(p, t, THRESHOLDS)
    assert [r["threshold"] for r in got] == THRESHOLDS
    for g, o in zip(got, old):
        assert set(g) == set(o)
        for k in metric.NAMES:
            assert g[k] == pytest.approx(o[k], rel=4 * EPS32), (o["threshold"], k)
    # and exactly the Python float64 numbers at each threshold
    for row, th in zip(got, THRESHOLDS):
        pred = probs >= th
        c = [
            (pred & target).sum((1, 2)),
            (pred & ~target).sum((1, 2)),
            (~pred & target).sum((1, 2)),
        ]
        for k, v in old_python_scores(*c).items():
            assert row[k] == pytest.approx(v, rel=0, abs=1e-12), (th, k)
    # numpy input, 3-d masks: the same rows
    assert threshold_sweep(probs, target, THRESHOLDS) == got


def test_threshold_sweep_any_order_and_repeats(masks) -> None:
    probs, _, target = masks
    rows = threshold_sweep(probs, target, [0.7, 0.3, 0.7])
    assert [r["threshold"] for r in rows] == [0.7, 0.3, 0.7]
    assert rows[0] == rows[2]
    assert rows[1] == threshold_sweep(probs, target, [0.3])[0]
    assert len(threshold_sweep(probs, target)) == 19  # default 0.05 ... 0.95


def test_threshold_curve_is_pixel_scores_per_column(masks) -> None:
    probs, _, target = masks
    c = np.stack([np.stack(counts_at_thresholds(p, t, THRESHOLDS)) for p, t in zip(probs, target)])
    rows = threshold_curve(c[:, 0], c[:, 1], c[:, 2], THRESHOLDS)
    for i, row in enumerate(rows):
        s = pixel_scores(c[:, 0, i], c[:, 1, i], c[:, 2, i])
        assert row == {"threshold": THRESHOLDS[i], **{k: s[k] for k in metric.NAMES}}


# ----------------------------------------------------------------------------- roc_auc
def test_roc_auc_equals_old_rank_implementation_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(100):
        n = int(rng.integers(2, 400))
        scores = rng.integers(0, int(rng.integers(2, 30)), n) / 10.0  # many ties
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        want = old_roc_auc(scores, labels)
        got = roc_auc(scores, labels)
        if math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want, rel=0, abs=1e-12)


def test_roc_auc_agrees_with_torchmetrics_to_float32() -> None:
    # why roc_auc keeps its own code: torchmetrics matches on tied scores in [0, 1], but only to
    # float32 precision, and squashes scores outside [0, 1] (pixel areas) with a sigmoid
    from torchmetrics.functional.classification import binary_auroc

    rng = np.random.default_rng(4)
    for _ in range(20):
        scores = rng.integers(0, 8, 300) / 7.0
        labels = rng.random(300) < 0.4
        lib = binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels.astype(np.int64)))
        assert roc_auc(scores, labels) == pytest.approx(float(lib), abs=1e-6)
    area = np.array([0, 50, 120, 4000, 9000, 100, 0, 30000], dtype=float)
    has = np.array([0, 1, 0, 1, 1, 0, 0, 1], dtype=bool)
    pos, neg = area[has], area[~has]
    diff = pos[:, None] - neg[None, :]
    assert roc_auc(area, has) == ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
