"""COCO in and out (steelseg.coco): exact RLE round trips, polygons, scores, the overlap rule,
bad COCO files, and steelseg-predict's predictions.coco.json."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from helpers import exit_code
from steelseg import coco
from steelseg.cli.predict import main as predict_main

NAMES = {1: "scratch", 2: "pit", 3: "patch"}


def class_masks() -> list[tuple[str, np.ndarray]]:
    """Masks with what a round trip must keep: a hole, a diagonal touch, one-pixel
    components, classes side by side, and an empty image."""
    a = np.zeros((40, 60), np.uint8)
    cv2.circle(a, (20, 20), 12, 1, -1)
    cv2.circle(a, (20, 20), 5, 0, -1)  # a hole in class 1
    a[30:34, 40:50] = 2
    a[34:37, 50:53] = 2  # touches the block above only at a corner: one component
    a[0, 59] = a[39, 0] = 3  # one-pixel components
    a[5:9, 40:45] = 3
    a[5:9, 45:50] = 1  # a class 1 patch beside a class 3 one
    b = np.zeros((24, 32), np.uint8)
    b[2:20, 3:30] = 2
    return [("a.png", a), ("b.jpg", b), ("empty.png", np.zeros((8, 8), np.uint8))]


def round_trip(doc: dict) -> list[np.ndarray]:
    ids = {cat: k for cat, (k, _) in coco.category_classes(doc, "test").items()}
    return [mask for _, mask in coco.coco_to_masks(doc, ids)]


def test_masks_to_coco_to_masks_is_exact(tmp_path: Path) -> None:
    items = class_masks()
    doc = coco.masks_to_coco(items, NAMES)
    coco.write_coco(tmp_path / "labels.json", doc)
    read = json.loads((tmp_path / "labels.json").read_text())
    for (_, mask), back in zip(items, round_trip(read)):
        np.testing.assert_array_equal(back, mask)
    assert read["categories"] == [
        {"id": c, "name": n, "supercategory": "defect"} for c, n in NAMES.items()
    ]
    assert [(i["file_name"], i["height"], i["width"]) for i in read["images"]] == [
        ("a.png", 40, 60), ("b.jpg", 24, 32), ("empty.png", 8, 8)
    ]  # fmt: skip
    # one annotation per 8-connected component of each class: a holed disc and a patch of
    # class 1, the corner-touching blocks of class 2, three pieces of class 3; b's block
    by_image = [[a["category_id"] for a in read["annotations"] if a["image_id"] == i] for i in (1, 2, 3)]  # fmt: skip
    assert [sorted(ids) for ids in by_image] == [[1, 1, 2, 3, 3, 3], [2], []]
    a = items[0][1]
    for ann in read["annotations"]:
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        mask = coco.segmentation_mask(ann["segmentation"], *ann["segmentation"]["size"])
        assert ann["area"] == mask.sum()
        x, y, w, h = ann["bbox"]
        assert mask[y : y + h, x : x + w].sum() == mask.sum() and mask[y, x : x + w].any()
    blocks = [x for x in read["annotations"] if x["image_id"] == 1 and x["category_id"] == 2]
    assert blocks[0]["area"] == (a == 2).sum() == 49


def test_polygons_trace_each_component_within_a_pixel() -> None:
    mask = np.zeros((50, 70), np.uint8)
    cv2.circle(mask, (20, 25), 15, 1, -1)
    mask[10:20, 45:65] = 2
    mask[40, 60] = 2  # one pixel: a box round it
    doc = coco.masks_to_coco([("a.png", mask)], NAMES, polygons=True)
    assert all(isinstance(a["segmentation"], list) for a in doc["annotations"])
    for ann in doc["annotations"]:
        drawn = coco.segmentation_mask(ann["segmentation"], 50, 70)
        truth = np.zeros_like(drawn)
        x, y, w, h = ann["bbox"]
        truth[y : y + h, x : x + w] = mask[y : y + h, x : x + w] == ann["category_id"]
        assert (drawn & truth).sum() / (drawn | truth).sum() > 0.75  # pixel-centre outlines
        assert not (drawn & ~truth).any()  # never beyond the component
    assert coco.masks_to_coco([("a.png", mask)], NAMES, polygons=True)["annotations"][2][
        "segmentation"
    ] == [[60.0, 40.0, 61.0, 40.0, 61.0, 41.0, 60.0, 41.0]]


def test_scores_are_given_or_the_mean_probability_inside() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[1:3, 1:3] = 1
    mask[6:9, 6:9] = 2
    prob = np.zeros((3, 10, 10), np.float32)
    prob[0, 1:3, 1:3] = [[0.6, 0.8], [0.9, 0.7]]
    prob[1, 6:9, 6:9] = 0.5
    doc = coco.masks_to_coco([("a.png", mask)], NAMES, probabilities=[prob])
    assert [a["score"] for a in doc["annotations"]] == [0.75, 0.5]
    doc = coco.masks_to_coco([("a.png", mask)], NAMES, scores=[{1: 0.9}])
    assert [a.get("score") for a in doc["annotations"]] == [0.9, None]
    binary = coco.masks_to_coco([("a.png", mask > 0)], {1: "defect"}, probabilities=[prob[0]])
    assert [a["score"] for a in binary["annotations"]] == [0.75, 0.0]


def test_a_class_without_a_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"the mask of a.png holds class 3, which has no name"):
        coco.masks_to_coco([("a.png", np.full((4, 4), 3, np.uint8))], {1: "x", 2: "y"})


def test_overlap_rule_draws_the_smaller_instance_over_the_larger() -> None:
    large, small = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    large[2:18, 2:18] = True
    small[8:11, 8:11] = True
    for order in ([(1, large), (2, small)], [(2, small), (1, large)]):
        mask = coco.paint((20, 20), order)
        assert (mask[small] == 2).all() and (mask[large & ~small] == 1).all()
    same = large.copy()  # equal areas: the later one on top
    assert (coco.paint((20, 20), [(1, large), (3, same)])[large] == 3).all()


def test_concat_renumbers_images_and_annotations() -> None:
    items = class_masks()
    parts = [coco.masks_to_coco([item], NAMES) for item in items]
    whole = coco.concat(parts, NAMES)
    assert whole == coco.masks_to_coco(items, NAMES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["images"][1].update(id=1), r"image id 1 is used twice \(a.png and b.jpg\)"),
        (
            lambda d: d["annotations"][0].update(category_id=9),
            r"annotation 1 \(image a.png\) has the unknown category_id 9",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation=[[1, 1, 80, 1, 80, 10]]),
            r"annotation 1 \(image a.png\) has the point \(80, 1\) outside its 60x40 image",
        ),
        (
            lambda d: d["annotations"][0].update(image_id=7),
            r"annotation 1 names image id 7, which is not in images",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [5, 5], "counts": "0"}),
            r"annotation 1 \(image a.png\): its RLE is 5x5 but the image is 60x40",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]),
            r"annotation 1 \(image a.png\): polygons must be a list of \[x1, y1",
        ),
        (lambda d: d["images"][0].pop("height"), r"image a.png \(id 1\) has no height and width"),
    ],
)
def test_bad_coco_is_one_line_naming_the_annotation(change, message) -> None:
    doc = coco.masks_to_coco(class_masks()[:2], NAMES)
    change(doc)
    ids = {c: c for c in NAMES}
    with pytest.raises(ValueError, match=message) as info:
        list(coco.coco_to_masks(doc, ids, where="labels.json"))
    assert str(info.value).startswith("labels.json") and "\n" not in str(info.value)


def test_read_coco_names_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"labels.json is not valid JSON \(line 1, column 13"):
        coco.read_coco(path)


def test_predict_writes_coco_polygons_with_scores(
    tiny_ckpt_4gate: Path, synth_root: Path, tmp_path: Path
) -> None:
    """Each component of each class of each predicted mask is one polygon instance, scored by
    its mean probability; the CSV names each class (Kaggle data: the ids)."""
    out = tmp_path / "pred"
    images = sorted((synth_root / "test_images").iterdir())[:2]
    argv = [tiny_ckpt_4gate, *images, "--out", out, "--runtime", "torch", "--masks-only"]
    assert exit_code(predict_main, [*argv, "--no-tuned"]) == 0
    doc = json.loads((out / "predictions.coco.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["1", "2", "3", "4"]
    assert [i["file_name"] for i in doc["images"]] == [p.name for p in images]
    for entry in doc["images"]:
        ids = cv2.imread(str(out / "masks" / f"{Path(entry['file_name']).stem}.png"), -1)
        mine = [a for a in doc["annotations"] if a["image_id"] == entry["id"]]
        expected = sum(
            cv2.connectedComponents((ids == c).astype(np.uint8), connectivity=8)[0] - 1
            for c in range(1, 5)
        )
        assert len(mine) == expected > 0  # an untrained model: noisy masks
        for ann in mine:
            assert 0.0 < ann["score"] <= 1.0 and isinstance(ann["segmentation"], list)
        for c in range(1, 5):  # the areas add up to each class's pixels
            assert sum(a["area"] for a in mine if a["category_id"] == c) == (ids == c).sum()
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(rows["ClassName"]) <= {"1", "2", "3", "4"}
    assert (rows["ClassName"] == rows["ClassId"]).all()
