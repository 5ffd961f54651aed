"""steelseg.metric detection metrics: ROC AUC, image-level and defect-level detection.

Every expected value is worked out by hand in the comment next to it; the AUC is also checked
against the pairwise definition on random tied scores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from steelseg.metric import (
    defect_counts,
    defect_detection,
    defect_scores,
    image_detection,
    roc_auc,
)


# ----------------------------------------------------------------------------- roc_auc
def test_roc_auc_hand_computed() -> None:
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3 of 4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_roc_auc_ties_count_one_half() -> None:
    # positive 1 vs negatives 1 (tie: 1/2) and 0 (win: 1) -> 1.5 / 2
    assert roc_auc([1, 1, 0], [True, False, False]) == pytest.approx(0.75)
    assert roc_auc([0.5] * 4, [0, 1, 0, 1]) == pytest.approx(0.5)  # all tied: chance


def test_roc_auc_perfect_and_inverted() -> None:
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0


def test_roc_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # few distinct values: many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_one_class_is_nan() -> None:
    assert math.isnan(roc_auc([0.2, 0.7], [1, 1]))
    assert math.isnan(roc_auc([0.2, 0.7], [0, 0]))


def test_roc_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        roc_auc([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.1, float("nan")], [1, 0])


# ----------------------------------------------------------------------------- image level
def test_image_detection_hand_computed() -> None:
    predicted = [1, 1, 0, 0, 1]
    has_defect = [1, 0, 1, 0, 1]
    # tp: images 0, 4; fp: 1; fn: 2; tn: 3
    out = image_detection(predicted, has_defect, scores=[0.9, 0.6, 0.3, 0.1, 0.8])
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (2, 1, 1, 1)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["specificity"] == pytest.approx(1 / 2)
    assert out["f1"] == pytest.approx(4 / 6)  # 2tp / (2tp + fp + fn)
    assert out["accuracy"] == pytest.approx(3 / 5)
    # positives 0.9, 0.3, 0.8 vs negatives 0.6, 0.1: 0.9 wins 2, 0.3 wins 1, 0.8 wins 2 -> 5/6
    assert out["roc_auc"] == pytest.approx(5 / 6)


def test_image_detection_without_scores_has_no_auc() -> None:
    assert "roc_auc" not in image_detection([1, 0], [1, 0])


def test_image_detection_degenerate_ratios_are_nan() -> None:
    nothing_predicted = image_detection([0, 0, 0], [1, 0, 1])
    assert math.isnan(nothing_predicted["precision"])  # no positive prediction: undefined
    assert nothing_predicted["recall"] == 0.0
    assert nothing_predicted["f1"] == 0.0  # 0 / (0 + 0 + 2)
    all_clean = image_detection([0, 1], [0, 0], scores=[0.1, 0.7])
    assert math.isnan(all_clean["recall"])
    assert math.isnan(all_clean["roc_auc"])
    assert all_clean["specificity"] == 0.5
    assert math.isnan(image_detection([0, 0], [0, 0])["f1"])  # nothing anywhere


def test_image_detection_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="same length"):
        image_detection([1, 0, 1], [1, 0])


# ----------------------------------------------------------------------------- defect level
def blank() -> np.ndarray:
    return np.zeros((10, 10), dtype=bool)


def test_defect_counts_hand_computed() -> None:
    target, pred = blank(), blank()
    target[0:2, 0:4] = True  # defect A, 8 pixels
    target[8, 8] = True  # defect B, 1 pixel, missed
    pred[0:2, 0:2] = True  # covers half of A: IoU 4 / 8 = 0.5
    pred[5, 5:7] = True  # a false alarm
    assert defect_counts(pred, target, iou_threshold=0.5) == (2, 1, 2, 1)
    assert defect_counts(pred, target, iou_threshold=0.51) == (2, 0, 2, 0)
    assert defect_counts(pred, target, iou_threshold=0.1) == (2, 1, 2, 1)


def test_defect_counts_connectivity() -> None:
    target = blank()
    target[0, 0] = target[1, 1] = True  # diagonal neighbours
    assert defect_counts(target, target, connectivity=8) == (1, 1, 1, 1)
    assert defect_counts(target, target, connectivity=4) == (2, 2, 2, 2)


def test_one_prediction_can_find_two_defects() -> None:
    target, pred = blank(), blank()
    target[0, 0] = target[0, 2] = True
    pred[0, 0:3] = True  # IoU 1/3 with each
    assert defect_counts(pred, target, iou_threshold=0.3) == (2, 2, 1, 1)
    assert defect_counts(pred, target, iou_threshold=0.4) == (2, 0, 1, 0)


def test_defect_counts_empty_masks() -> None:
    target = blank()
    target[3, 3] = True
    assert defect_counts(blank(), blank()) == (0, 0, 0, 0)
    assert defect_counts(blank(), target) == (1, 0, 0, 0)
    assert defect_counts(target, blank()) == (0, 0, 1, 0)


def test_defect_counts_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="iou_threshold"):
        defect_counts(blank(), blank(), iou_threshold=0.0)
    with pytest.raises(ValueError, match="connectivity"):
        defect_counts(blank(), blank(), connectivity=6)
    with pytest.raises(ValueError, match="shape"):
        defect_counts(blank(), np.zeros((5, 5), bool))


def test_defect_detection_sums_over_images() -> None:
    t1, p1 = blank(), blank()
    t1[0:2, 0:2] = True
    p1[0:2, 0:2] = True  # found exactly
    t2, p2 = blank(), blank()
    t2[5, 5] = True  # missed
    p2[0, 9] = True  # false alarm
    p2[9, 0] = True  # another
    out = defect_detection([p1, p2], [t1, t2])
    # true defects 2, found 1; predicted 3, matched 1
    assert (out["n_true"], out["found"], out["n_pred"], out["matched"]) == (2, 1, 3, 1)
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))


def test_defect_scores_degenerate() -> None:
    none = defect_scores(0, 0, 0, 0)
    assert math.isnan(none["recall"]) and math.isnan(none["precision"]) and math.isnan(none["f1"])
    missed_all = defect_scores(3, 0, 2, 0)
    assert missed_all["recall"] == 0.0 and missed_all["precision"] == 0.0
    assert missed_all["f1"] == 0.0
