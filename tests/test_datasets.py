"""The data report, near-duplicates and the group split, and the active-learning review.

Every test makes its data in tmp_path: textured grey images (smooth random shading plus grain,
each its own) in the folder layout, some with flipped and rotated copies.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from helpers import exit_code
from steelseg import datareport, duplicates, layouts
from steelseg import prepare as prep
from steelseg.cli.data import main as data_main
from steelseg.inputs import Source
from steelseg.postprocess import ClassPostProcess, PostProcess
from steelseg.predict import Prediction
from steelseg.review import closeness, rank_scores, uncertainty

SHAPE = (96, 160)  # (height, width) of the test images
#: copies the test makes of an original: each of the flips and quarter turns but the identity
COPIES = {k: t for k, t in duplicates.TRANSFORMS.items() if k != "identity"}


def texture(seed: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A grey picture of its own: smooth random shading (a 4x6 grid, upsampled) plus grain."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(128, 40, (4, 6)).astype(np.float32)
    smooth = cv2.resize(coarse, shape[::-1], interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth + rng.normal(0, 6, shape), 0, 255).astype(np.uint8)


def defect(seed: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A 0/255 mask with one rectangle (none for every fourth seed)."""
    mask = np.zeros(shape, np.uint8)
    if seed % 4:
        y, x = 10 + 5 * (seed % 7), 20 + 9 * (seed % 9)
        mask[y : y + 20, x : x + 30] = 255
    return mask


def write_set(root: Path, n: int, copies: dict[int, list[str]] | None = None) -> Path:
    """A folder layout of ``n`` distinct pictures ``img00.png`` ...; ``copies``: {original:
    [transform, ...]} adds ``img00_rot90.png`` ... (the image and its mask transformed)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image, mask = texture(i), defect(i)
        versions = {f"img{i:02d}": (image, mask)}
        for name in (copies or {}).get(i, []):
            t = duplicates.TRANSFORMS[name]
            versions[f"img{i:02d}_{name}"] = (t(image), t(mask))
        for stem, (im, m) in versions.items():
            assert cv2.imwrite(str(root / "images" / f"{stem}.png"), np.ascontiguousarray(im))
            assert cv2.imwrite(str(root / "masks" / f"{stem}.png"), np.ascontiguousarray(m))
    return root


# ----------------------------------------------------------------------------- near-duplicates
def test_near_duplicates_group_flipped_and_rotated_copies(tmp_path: Path) -> None:
    """Each original with its 7 flips and quarter turns is one group; 10 distinct pictures
    stay alone; a JPEG copy (re-encoded) still joins its original."""
    copies = {0: list(COPIES), 3: ["rot90", "hflip"], 7: ["vflip"]}
    root = write_set(tmp_path / "set", 12, copies)
    jpeg = root / "images" / "img05_jpeg.jpg"  # the same picture, JPEG-compressed
    assert cv2.imwrite(str(jpeg), texture(5), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert cv2.imwrite(str(root / "masks" / "img05_jpeg.png"), defect(5))
    ids = layouts.list_images(root)
    found = duplicates.find_groups(root / "images", ids)
    expected = sorted(
        [
            sorted(["img00.png", *(f"img00_{k}.png" for k in COPIES)]),
            ["img03.png", "img03_hflip.png", "img03_rot90.png"],
            ["img05.png", "img05_jpeg.jpg"],
            ["img07.png", "img07_vflip.png"],
        ],
        key=lambda g: (-len(g), g[0]),
    )
    assert found["groups"] == expected
    assert all(d <= duplicates.HASH_THRESHOLD for *_, d in found["pairs"])
    # the distinct pictures are far apart: a group needs a pair within the threshold
    hashes, _ = duplicates.image_hashes([root / "images" / f"img{i:02d}.png" for i in range(12)])
    far = [duplicates.pair_distance(hashes[a], hashes[b]) for a in range(12) for b in range(a)]
    assert min(far) > duplicates.HASH_THRESHOLD


def test_split_leaks_counts_groups_across_sides() -> None:
    groups = [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    split = {"a": "train", "b": "test", "c": "test", "d": "val", "e": "test", "f": "train"}
    leaks = duplicates.split_leaks(groups, split)  # g is not in the split
    assert leaks["groups"] == 2 and leaks["images"] == 5
    assert leaks["leaked"] == 2  # b and c have a near-duplicate in train; d/e only val-test
    assert leaks["across"][0] == {"test": ["b", "c"], "train": ["a"]}


def test_keep_groups_together_moves_only_the_groups_across_sides() -> None:
    sides = np.array(["train", "train", "test", "val", "test", "train", "test"], dtype=object)
    labels = np.array([0, 0, 0, 1, 1, 2, 3])  # group 0: 2 train + 1 test; group 1: a tie
    new, moved = duplicates.keep_groups_together(sides, labels, prep.SPLITS)
    assert list(new[:3]) == ["train"] * 3  # the side most of the group is on
    assert new[3] == new[4] and moved == 2
    assert list(new[5:]) == ["train", "test"]  # images alone stay


# ----------------------------------------------------------------------------- group split
def test_group_split_keeps_each_group_on_one_side(tmp_path: Path) -> None:
    """Without data.group_split the report counts the leak; with it, no group crosses sides,
    prepare.json records the groups, and the split keeps its stratification's counts near."""
    copies = {i: ["rot90", "hflip", "vflip"] for i in range(0, 18, 3)}  # 6 groups of 4
    root = write_set(tmp_path / "set", 18, copies)
    plain = prep.prepare(root, tmp_path / "plain", n_images=None, split=(0.6, 0.2, 0.2), seed=0)
    report = datareport.dataset_report(root, plain)
    assert len(report["duplicates"]["groups"]) == 6
    leaks = report["split"]["leaks"]
    assert leaks["groups"] > 0 and leaks["leaked"] > 0
    assert "group_split" not in json.loads((tmp_path / "plain" / "prepare.json").read_text())

    grouped = prep.prepare(
        root, tmp_path / "grouped", n_images=None, split=(0.6, 0.2, 0.2), seed=0, group_split=True
    )
    report = datareport.dataset_report(root, grouped)
    assert report["split"]["leaks"] == {"groups": 0, "images": 0, "leaked": 0, "across": []}
    meta = json.loads((tmp_path / "grouped" / "prepare.json").read_text())
    assert meta["group_split"]["groups"] == 6 and meta["group_split"]["images"] == 24
    assert meta["group_split"]["moved"] > 0 and meta["params"]["group_split"] is True
    counts = meta["counts"]
    assert abs(counts["train"] - 25) <= 4 and counts["val"] > 0 and counts["test"] > 0
    rows = layouts.read_split(grouped)
    sides = dict(zip(rows["ImageId"], rows["split"]))
    for i in copies:  # each original and its copies on one side
        assert len({sides[f"img{i:02d}{s}.png"] for s in ("", "_rot90", "_hflip", "_vflip")}) == 1


def test_group_split_is_a_split_parameter_only_when_on(tmp_path: Path) -> None:
    """Splits prepared before data.group_split existed keep their folder (and prepare.json)."""
    off = prep.prepare_params(tmp_path, {"group_split": False})
    on = prep.prepare_params(tmp_path, {"group_split": True})
    assert "group_split" not in off and on == {**off, "group_split": True}
    assert prep.default_prepared_dir(tmp_path, off) != prep.default_prepared_dir(tmp_path, on)


# ----------------------------------------------------------------------------- the report
def test_data_report_on_a_folder(tmp_path: Path, capsys) -> None:
    copies = {1: ["rot90"]}
    root = write_set(tmp_path / "set", 8, copies)
    split = tmp_path / "split.csv"
    pd.DataFrame(
        {
            "ImageId": ["img01.png", "img01_rot90.png", "img02.png"],
            "split": ["train", "test", "val"],
        }
    ).to_csv(split, index=False)
    out = tmp_path / "report"
    assert exit_code(data_main, ["report", root, "--out", out, "--split-file", split]) == 0
    said = capsys.readouterr().out
    assert "1 near-duplicate group(s)" in said and "leaks 1 val/test image(s)" in said
    r = json.loads((out / "data_report.json").read_text())
    assert r["images"] == 9 and r["layout"] == "folder"
    assert r["sizes"] == [{"height": 96, "width": 160, "images": 8}, {"height": 160, "width": 96, "images": 1}]  # fmt: skip
    defective = [i for i in range(8) if i % 4] + [1]  # the copy of img01 too
    (defect_class,) = r["classes"]
    assert defect_class["class"] == 1 and defect_class["name"] == "defect"
    assert defect_class["images"] == len(defective) == defect_class["defects"]
    assert defect_class["pixels"] == 20 * 30 * len(defective)
    assert sum(defect_class["area_histogram"]["counts"]) == len(defective)
    assert r["empty"] == {"images": 2, "share": 2 / 9}
    assert r["duplicates"]["groups"] == [["img01.png", "img01_rot90.png"]]
    assert r["split"]["leaks"]["leaked"] == 1 and r["split"]["counts"] == {
        "train": 1,
        "val": 1,
        "test": 1,
    }
    page = (out / "data_report.html").read_text()
    assert "This split leaks 1 val/test image(s)" in page and page.isascii()


def test_data_report_masks_touching_the_border(tmp_path: Path) -> None:
    root = write_set(tmp_path / "set", 4)
    edge = np.zeros(SHAPE, np.uint8)
    edge[40:50, 150:] = 255  # reaches the right edge
    assert cv2.imwrite(str(root / "masks" / "img00.png"), edge)
    r = datareport.dataset_report(root)
    assert r["border"]["images"] == 1 and r["classes"][0]["border_images"] == 1
    assert r["split"] is None


def test_data_report_on_the_kaggle_layout(synth_root: Path, tmp_path: Path) -> None:
    r = datareport.report_dataset(synth_root, tmp_path / "r")
    labels = layouts.image_labels(synth_root)
    assert r["layout"] == "kaggle" and r["images"] == len(labels)
    assert [(c["class"], c["name"]) for c in r["classes"]] == [(c, str(c)) for c in range(1, 5)]
    for c in r["classes"]:
        col = f"EncodedPixels_{c['class']}"
        assert c["images"] == int((labels[col] != "").sum())
    assert r["empty"]["images"] == int((labels["defect_pixels"] == 0).sum())
    assert r["sizes"] == [{"height": 256, "width": 1600, "images": len(labels)}]
    assert (tmp_path / "r" / "data_report.html").is_file()


def test_data_report_bad_split_file_is_one_line(tmp_path: Path, capsys) -> None:
    root = write_set(tmp_path / "set", 3)
    split = tmp_path / "split.csv"
    split.write_text("ImageId,split\nimg00.png,holdout\n")
    out = tmp_path / "report"
    assert exit_code(data_main, ["report", root, "--out", out, "--split-file", split]) == 2
    assert "split 'holdout' is not one of" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- uncertainty
def _prediction(prob, plain=None, image_prob=None) -> Prediction:
    prob = np.asarray(prob, np.float32)
    return Prediction(Source(Path("a.png"), "a.png"), np.zeros(prob.shape[-2:], np.uint8), prob,
                      plain, image_prob)  # fmt: skip


def test_uncertainty_terms() -> None:
    assert closeness(np.array([0.0, 0.3, 0.5, 1.0]), 0.5).tolist() == pytest.approx(
        [0.0, 0.6, 1.0, 0.0]
    )
    assert closeness(np.array([0.2, 1.0]), 0.2).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    pp = PostProcess(threshold=0.5)
    sure = _prediction(np.tile([0.0, 1.0], (4, 2)))
    assert uncertainty(sure, pp, flips=0) == {"pixel": 0.0}
    unsure = _prediction(np.full((4, 4), 0.5))
    assert uncertainty(unsure, pp, flips=0) == {"pixel": 1.0}
    # the plain pass says 0.2, the TTA average of it and one flip 0.5: the flip said 0.8
    flips = uncertainty(_prediction(np.full((4, 4), 0.5), plain=np.full((4, 4), 0.2)), pp, 1)
    assert flips["flips"] == pytest.approx(0.6)
    # two classes, one thresholded at 0.2; the gate: the class nearest its gate threshold
    per_class = ClassPostProcess((PostProcess(threshold=0.2, gate_threshold=0.5),
                                  PostProcess(threshold=0.5, gate_threshold=0.9)))  # fmt: skip
    prob = np.stack([np.full((4, 4), 0.2), np.zeros((4, 4))])
    terms = uncertainty(_prediction(prob, image_prob=np.array([0.0, 0.8])), per_class, 0)
    assert terms["pixel"] == pytest.approx(1.0) and terms["gate"] == pytest.approx(1 - 0.1 / 0.9)


def test_rank_scores_puts_the_most_uncertain_first() -> None:
    scores = pd.DataFrame(
        {
            "ImageId": ["a", "b", "c", "d"],
            "pixel": [0.1, 0.3, 0.2, 0.3],
            "flips": [0.0, 0.2, 0.1, 0.3],
        }
    )
    ranked = rank_scores(scores)
    assert ranked["ImageId"].tolist() == ["d", "b", "c", "a"]
    assert ranked["score"].iloc[0] == pytest.approx((0.875 + 1.0) / 2)


# ----------------------------------------------------------------------------- the loop
def test_active_learning_loop(tmp_path: Path, monkeypatch) -> None:
    """train -> steelseg-predict --review 3 -> a correction in the COCO task -> steelseg-import
    -> train again with data.extra_roots=[the corrected task]: the corrected image trains with
    the corrected mask, in train only. (15 s on 2 cores: two 2-batch trainings.)"""
    from omegaconf import open_dict

    from helpers import run_main
    from steelseg import config, rle
    from steelseg.dataset import SteelDataModule
    from steelseg.train import train

    plant = write_set(tmp_path / "plant", 12)
    pool = tmp_path / "pool"  # new, unlabelled images from the line
    pool.mkdir()
    for i in range(20, 26):
        assert cv2.imwrite(str(pool / f"new{i}.png"), texture(i))

    def compose(name: str, *extra: str):
        overrides = [
            "experiment=quickstart",  # the tiny CPU model: mobilenetv3_small, no weights
            "data=folder",
            f"data.root={plant}",
            "data.batch_size=4",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.enable_model_summary=false",
            "callbacks.progress_bar=null",
            "test=false",
            *extra,
        ]
        cfg = config.compose(overrides, output_dir=tmp_path / name)
        with open_dict(cfg):
            cfg.data.prepared_dir = str(tmp_path / "prepared")
        return cfg

    train(compose("run1"))
    ckpt = tmp_path / "run1" / "checkpoints" / "last.ckpt"

    out = tmp_path / "pred"
    argv = [ckpt, pool, "--out", out, "--review", 3, "--runtime", "torch", "--no-progress"]
    assert run_main("steelseg-predict", argv, monkeypatch) == 0
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 6 and {"pixel", "flips"} <= set(scores.columns)
    task = out / "review"
    picked = pd.read_csv(task / "review.csv")
    assert picked["ImageId"].tolist() == rank_scores(scores)["ImageId"].head(3).tolist()
    assert sorted(p.name for p in (task / "images").iterdir()) == sorted(picked["ImageId"])
    summary = json.loads((out / "predict.json").read_text())
    assert summary["review"]["images"] == 3 and summary["review"]["tta"] == ["hflip", "vflip"]
    coco = json.loads((task / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["defect"]
    assert [im["file_name"] for im in coco["images"]] == picked["ImageId"].tolist()
    polygons = json.loads((task / "annotations_polygons.json").read_text())
    assert all(isinstance(a["segmentation"], list) for a in polygons["annotations"])
    assert "Actions > Upload annotations > COCO 1.0" in (task / "README.txt").read_text()

    # the labeller's correction of the first image: its masks replaced by one rectangle
    first = coco["images"][0]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != first["id"]]
    box = [10, 20, 70, 20, 70, 50, 10, 50]  # x, y: 60 x 30 pixels from (10, 20)
    coco["annotations"].append(
        {"id": 999, "image_id": first["id"], "category_id": 1, "segmentation": [box],
         "area": 1800, "bbox": [10, 20, 60, 30], "iscrowd": 0}
    )  # fmt: skip
    exported = tmp_path / "export.json"  # what the tool exports
    exported.write_text(json.dumps(coco))
    corrected = tmp_path / "corrected"
    argv = [exported, "--format", "coco", "--images", task / "images", "--out", corrected]
    assert run_main("steelseg-import", argv, monkeypatch) == 0
    expected = np.zeros((first["height"], first["width"]), np.uint8)
    expected[20:50, 10:70] = 1
    stem = Path(first["file_name"]).stem
    assert (layouts.read_mask(corrected / "masks" / f"{stem}.png") == expected).all()

    cfg = compose("run2", f"data.extra_roots=[{corrected}]")
    dm = SteelDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    dm.prepare_data()
    dm.setup()
    added = dm.datasets["train"].datasets[1]
    assert sorted(added.ids) == sorted(picked["ImageId"])
    record = added.records[added.ids.index(first["file_name"])]
    assert record["EncodedPixels"] == rle.encode(expected)
    assert first["file_name"] not in {*dm.datasets["val"].ids, *dm.datasets["test"].ids}
    train(cfg)  # and it trains
    assert (tmp_path / "run2" / "checkpoints" / "last.ckpt").is_file()


def test_review_of_a_gated_four_class_model(tiny_ckpt_4gate: Path, synth_root: Path, tmp_path):
    """The gate term joins the score, and the task's labels are the model's 4 classes."""
    from steelseg.inputs import collect_inputs
    from steelseg.predict import Predictor
    from steelseg.review import predict_for_review

    predictor = Predictor.from_checkpoint(tiny_ckpt_4gate, "cpu", tta=["hflip"])
    sources, _ = collect_inputs([synth_root / "test_images"])
    out = tmp_path / "pred"
    summary = predict_for_review(predictor, sources, out, 2, outputs=("masks",), progress=False)
    assert summary["review"]["terms"] == ["pixel", "gate", "flips"]
    assert summary["review"]["tta"] == ["hflip"]  # the model's own flips
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == len(sources) and scores["gate"].between(0, 1).all()
    coco = json.loads((out / "review" / "annotations.json").read_text())
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4] and len(coco["images"]) == 2
    for image in coco["images"]:  # the pre-annotations are the masks predict wrote
        mask = cv2.imread(str(out / "masks" / f"{Path(image['file_name']).stem}.png"), -1)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert sum(a["area"] for a in anns) == int((mask > 0).sum())
