"""steelseg.metric's segmentation metrics as the field names them (mmsegmentation's ``IoU``,
``Acc``, ``aAcc``, ``mIoU``, ``mAcc``, ``mDice``): the pixel confusion matrix over background and
every class, and its per-class scores.

A 3x3 two-class image is worked by hand, every entry and score; random class maps pin the
numbers to torchmetrics (``MulticlassConfusionMatrix``, ``MulticlassJaccardIndex`` and friends),
which the library itself never imports.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from steelseg.metric import confusion_matrix, segmentation_scores

NAMES = ["background", "1", "2"]
# 3x3, background 0 and classes 1, 2; three true pixels of each
TRUTH = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 2]])
PRED = np.array([[0, 1, 1], [0, 1, 0], [2, 2, 0]])


# ----------------------------------------------------------------------------- by hand
def test_confusion_matrix_by_hand() -> None:
    # pixel by pixel (truth, pred): (0,0) (0,1) (1,1) / (0,0) (1,1) (1,0) / (2,2) (2,2) (2,0)
    m = confusion_matrix(PRED, TRUTH, 3)
    assert m.dtype == np.int64
    assert m.tolist() == [
        [2, 1, 0],  # background: 2 right, 1 called class 1
        [1, 2, 0],  # class 1: 1 called background, 2 right
        [1, 0, 2],  # class 2: 1 called background, 2 right
    ]


def test_segmentation_scores_by_hand() -> None:
    s = segmentation_scores(confusion_matrix(PRED, TRUTH, 3), NAMES)
    # true pixels per class (rows) 3, 3, 3; predicted (columns) 4, 3, 2; right (diagonal) 2, 2, 2
    c = s["classes"]
    assert list(c) == NAMES
    expected = {
        "background": {"IoU": 2 / 5, "Dice": 4 / 7, "Precision": 2 / 4, "Recall": 2 / 3},
        "1": {"IoU": 2 / 4, "Dice": 4 / 6, "Precision": 2 / 3, "Recall": 2 / 3},
        "2": {"IoU": 2 / 3, "Dice": 4 / 5, "Precision": 2 / 2, "Recall": 2 / 3},
    }
    for name, scores in expected.items():
        for key, value in scores.items():
            assert c[name][key] == pytest.approx(value, abs=1e-15), (name, key)
    assert [c[n]["pixels"] for n in NAMES] == [3, 3, 3]
    assert [c[n]["predicted"] for n in NAMES] == [4, 3, 2]
    assert s["mIoU"] == pytest.approx((2 / 5 + 2 / 4 + 2 / 3) / 3, abs=1e-15)  # 47/90
    assert s["mDice"] == pytest.approx((4 / 7 + 4 / 6 + 4 / 5) / 3, abs=1e-15)
    assert s["mAcc"] == pytest.approx(2 / 3, abs=1e-15)  # mean recall
    assert s["aAcc"] == pytest.approx(6 / 9, abs=1e-15)  # pixels right / pixels
    assert s["confusion"] == [[2, 1, 0], [1, 2, 0], [1, 0, 2]]


def test_binary_masks_give_a_two_by_two_matrix_that_adds_up_over_images() -> None:
    pred = np.array([[True, True], [False, False]])
    truth = np.array([[True, False], [True, False]])
    m = confusion_matrix(pred, truth, 2)
    assert m.tolist() == [[1, 1], [1, 1]]  # tn 1, fp 1 / fn 1, tp 1
    clean = confusion_matrix(np.zeros((2, 2), bool), np.zeros((2, 2), bool), 2)
    assert (m + clean).tolist() == [[5, 1], [1, 1]]
    s = segmentation_scores(m + clean, ["background", "defect"])
    assert s["classes"]["defect"]["IoU"] == pytest.approx(1 / 3)  # tp / (tp + fp + fn)
    assert s["classes"]["background"]["IoU"] == pytest.approx(5 / 7)
    assert s["mIoU"] == pytest.approx((1 / 3 + 5 / 7) / 2)
    assert s["aAcc"] == pytest.approx(6 / 8)


def test_undefined_ratios_are_nan_and_skipped_by_the_means() -> None:
    # class 2 neither true nor predicted; class 1 predicted once, never true
    pred = np.array([[0, 1], [0, 0]])
    truth = np.zeros((2, 2), int)
    s = segmentation_scores(confusion_matrix(pred, truth, 3), NAMES)
    c = s["classes"]
    assert all(math.isnan(c["2"][k]) for k in ("IoU", "Dice", "Precision", "Recall"))
    assert c["1"]["IoU"] == 0.0 and c["1"]["Precision"] == 0.0 and math.isnan(c["1"]["Recall"])
    assert c["background"]["IoU"] == pytest.approx(3 / 4)
    assert s["mIoU"] == pytest.approx((3 / 4 + 0) / 2)  # over the defined classes
    assert s["mAcc"] == pytest.approx(3 / 4)  # background's recall alone
    assert math.isnan(segmentation_scores(np.zeros((2, 2), int), ["background", "d"])["mIoU"])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(np.array([0, 1]), np.array([-1, 1]), 3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros(4, int), 3)
    with pytest.raises(ValueError, match="square"):
        segmentation_scores(np.zeros((2, 3), int), NAMES)


# ----------------------------------------------------------------------------- torchmetrics
@pytest.fixture(scope="module")
def class_maps() -> tuple[np.ndarray, np.ndarray]:
    """(pred, truth) class-id maps of 6 images with background + 4 classes, every class present
    in both (so no ratio is undefined, where torchmetrics' zero_division rule would differ)."""
    rng = np.random.default_rng(0)
    truth = rng.choice(5, size=(6, 32, 48), p=[0.7, 0.1, 0.05, 0.1, 0.05])
    noise = rng.random(truth.shape) < 0.3
    pred = np.where(noise, rng.integers(0, 5, truth.shape), truth)
    return pred, truth


def test_confusion_matrix_equals_torchmetrics(class_maps) -> None:
    pred, truth = class_maps
    ours = sum(confusion_matrix(p, t, 5) for p, t in zip(pred, truth))
    tm = MulticlassConfusionMatrix(num_classes=5)
    for p, t in zip(pred, truth):  # image by image, as evaluation accumulates
        tm.update(torch.from_numpy(p), torch.from_numpy(t))
    np.testing.assert_array_equal(ours, tm.compute().numpy())


def test_segmentation_scores_equal_torchmetrics(class_maps) -> None:
    pred, truth = class_maps
    s = segmentation_scores(confusion_matrix(pred, truth, 5), ["background", "1", "2", "3", "4"])
    p, t = torch.from_numpy(pred), torch.from_numpy(truth)
    per_class = {
        "IoU": MulticlassJaccardIndex(num_classes=5, average=None),
        "Dice": MulticlassF1Score(num_classes=5, average=None),
        "Precision": MulticlassPrecision(num_classes=5, average=None),
        "Recall": MulticlassRecall(num_classes=5, average=None),
    }
    for key, tm in per_class.items():
        want = tm(p, t).double().numpy()
        got = [c[key] for c in s["classes"].values()]
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=key)  # torchmetrics: float32
    means = {
        "mIoU": MulticlassJaccardIndex(num_classes=5, average="macro"),
        "mDice": MulticlassF1Score(num_classes=5, average="macro"),
        "mAcc": MulticlassAccuracy(num_classes=5, average="macro"),
        "aAcc": MulticlassAccuracy(num_classes=5, average="micro"),
    }
    for key, tm in means.items():
        assert s[key] == pytest.approx(float(tm(p, t)), rel=1e-6), key
