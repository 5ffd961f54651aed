"""A plant's own data in the folder layout: ``images/`` + ``masks/<stem>.png`` (class ids).

Every test writes a tiny folder in tmp_path: 10 noisy images of two sizes (96x160 grey JPEGs,
128x192 colour PNGs) with masks holding classes 1 and 2 (two images clean).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import steelseg
from helpers import exit_code
from steelseg import layouts, rle
from steelseg import prepare as prep
from steelseg.cache import load_sample
from steelseg.cli.prepare import main as prepare_main

SIZES = ((96, 160), (128, 192))  # (height, width): two sizes, as a plant's cameras give


def masks_of(n: int = 10) -> dict[str, np.ndarray]:
    """{image file name: class-id mask}: classes 1 and 2 in rectangles, images 0 and 5 clean."""
    out = {}
    for i in range(n):
        h, w = SIZES[i % 2]
        mask = np.zeros((h, w), np.uint8)
        if i % 5:
            mask[8 + i : 30 + i, 10 : 40 + 2 * i] = 1
        if i % 3 == 1:
            mask[50:70, 60 + i : 90 + i] = 2
        out[f"part{i:02d}.{'jpg' if i % 2 == 0 else 'png'}"] = mask
    return out


def write_folder(root: Path, n: int = 10) -> Path:
    """A folder layout at ``root``: grey JPEGs at 96x160, colour PNGs at 128x192."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name, mask in masks_of(n).items():
        shape = mask.shape if name.endswith(".jpg") else (*mask.shape, 3)
        image = rng.integers(60, 200, shape, dtype=np.uint8)
        assert cv2.imwrite(str(root / "images" / name), image)
        assert cv2.imwrite(str(root / "masks" / f"{Path(name).stem}.png"), mask)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "plant")


# ----------------------------------------------------------------------------- the reader
def test_folder_labels_table(root: Path) -> None:
    df = layouts.image_labels(root, n_classes=2)  # dispatches on the layout
    expected = masks_of()
    assert df["ImageId"].tolist() == sorted(expected)
    assert list(df.columns) == [c for c in prep.SPLIT_COLUMNS if c != "split"] + [
        "EncodedPixels_1",
        "EncodedPixels_2",
    ]
    assert layouts.data_classes(list(df.columns)) == 2
    for row in df.to_dict("records"):
        mask = expected[row["ImageId"]]
        assert layouts.row_shape(row) == mask.shape  # each image's own size
        np.testing.assert_array_equal(
            rle.class_mask(layouts.row_masks(row), mask.shape), mask
        )  # per class, at the image's size
        np.testing.assert_array_equal(rle.decode(row["EncodedPixels"], mask.shape), mask > 0)
        present = sorted(set(np.unique(mask).tolist()) - {0})
        assert row["classes"] == " ".join(map(str, present))
        assert row["n_classes"] == len(present)
        assert row["defect_pixels"] == int((mask > 0).sum())
    assert (df["classes"] == "").sum() == 2  # clean images are rows too
    # None: as many classes as the masks hold (reading labels to evaluate)
    assert layouts.data_classes(list(layouts.folder_labels(root, None).columns)) == 2
    # binary masks need no n_classes: the default is 1
    binary = write_folder(root.parent / "binary", 4)
    for f in (binary / "masks").iterdir():
        cv2.imwrite(str(f), (cv2.imread(str(f), cv2.IMREAD_UNCHANGED) > 0).astype(np.uint8))
    assert layouts.data_classes(list(layouts.image_labels(binary).columns)) == 1


def test_read_mask_reads_palette_and_one_bit_pngs_as_class_ids(tmp_path: Path) -> None:
    from PIL import Image

    mask = np.array([[0, 1, 2], [2, 0, 1]], np.uint8)
    palette = Image.fromarray(mask, "L").convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)  # red, green: class colours
    palette.save(tmp_path / "p.png")
    Image.fromarray(mask > 0).save(tmp_path / "b.png")  # mode "1"
    np.testing.assert_array_equal(layouts.read_mask(tmp_path / "p.png"), mask)
    np.testing.assert_array_equal(layouts.read_mask(tmp_path / "b.png"), mask > 0)


# ----------------------------------------------------------------------------- bad input
def _resize_mask(root: Path) -> None:
    cv2.imwrite(str(root / "masks" / "part00.png"), np.zeros((100, 160), np.uint8))


def _value_3(root: Path) -> None:
    mask = masks_of()["part03.png"]
    mask[0, 0] = 3
    cv2.imwrite(str(root / "masks" / "part03.png"), mask)


def _values_0_1_255(root: Path) -> None:
    mask = masks_of()["part03.png"]
    mask[0, 0] = 255  # 1 could be a class id, 255 a binary defect
    cv2.imwrite(str(root / "masks" / "part03.png"), mask)


def _binary_mask_of_classes(root: Path) -> None:
    cv2.imwrite(str(root / "masks" / "part03.png"), (masks_of()["part03.png"] > 0) * np.uint8(255))


def _colour_mask(root: Path) -> None:
    cv2.imwrite(str(root / "masks" / "part01.png"), np.zeros((128, 192, 3), np.uint8))


def _no_masks(root: Path) -> None:
    for f in (root / "masks").iterdir():
        f.unlink()
    (root / "masks").rmdir()


def _no_images(root: Path) -> None:
    for f in (root / "images").iterdir():
        f.unlink()
    (root / "images").rmdir()


def _empty_images(root: Path) -> None:
    for f in (root / "images").iterdir():
        f.unlink()


def _empty_masks(root: Path) -> None:
    for f in (root / "masks").iterdir():
        f.unlink()


def _image_without_mask(root: Path) -> None:
    for i in (2, 3, 4, 6, 7, 8):
        (root / "masks" / f"part{i:02d}.png").unlink()


def _mask_without_image(root: Path) -> None:
    (root / "images" / "part01.png").unlink()


BAD = [
    ("mask-size", _resize_mask, ValueError, r"mask \S+part00.png is 160x100 but its image "
     r"\S+part00.jpg is 160x96"),
    ("value-above-n-classes", _value_3, ValueError, r"mask \S+part03.png holds the value 3, "
     r"above data.n_classes=2 .*set data.n_classes"),
    ("values-0-1-255", _values_0_1_255, ValueError, r"mask \S+part03.png holds the values "
     r"\{0, 1, 255\}: neither class ids \(0..2\) nor a binary 0/255 mask"),
    ("binary-mask-of-classes", _binary_mask_of_classes, ValueError, r"mask \S+part03.png is a "
     r"binary 0/255 mask \(values \{0, 255\}\) but data.n_classes=2: .*data.n_classes=1"),
    ("colour-mask", _colour_mask, ValueError, r"part01.png has mode RGB, not single-channel"),
    ("no-masks", _no_masks, FileNotFoundError, r"has images/ but no masks/: put one PNG"),
    ("no-images", _no_images, FileNotFoundError, r"has masks/ but no images/"),
    ("empty-images", _empty_images, ValueError, r"images holds no images"),
    ("empty-masks", _empty_masks, ValueError, r"masks holds no masks \(\*\.png\)"),
    ("image-without-mask", _image_without_mask, FileNotFoundError,
     r"6 image\(s\) in \S+ have no mask in \S+: part02.jpg, part03.png, part04.jpg, part06.jpg, "
     r"part07.png \.\.\. \(pass --skip-bad"),
    ("mask-without-image", _mask_without_image, FileNotFoundError,
     r"1 mask\(s\) in \S+ have no image in \S+: part01.png \(pass --skip-bad"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "error", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_folder_is_one_line_and_writes_nothing(
    root: Path, tmp_path: Path, capsys, damage, error: type[Exception], message: str
) -> None:
    damage(root)
    with pytest.raises(error, match=message):
        layouts.image_labels(root, n_classes=2)
    out = tmp_path / "out"
    code = exit_code(prepare_main, ["--data-dir", root, "--out", out, "--n-classes", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("steelseg-prepare: error: ")
    assert not out.exists()
    assert not (root / "prepared").exists()


@pytest.mark.parametrize("damage", [_image_without_mask, _mask_without_image])
def test_skip_bad_drops_unpaired_files_with_a_warning(root: Path, tmp_path: Path, caplog, damage):
    damage(root)
    df = layouts.folder_labels(root, 2, skip_bad=True)
    images = {p.name for p in (root / "images").iterdir()}
    masks = {p.stem for p in (root / "masks").iterdir()}
    assert set(df["ImageId"]) == {i for i in images if Path(i).stem in masks}
    assert "dropping them" in caplog.text
    argv = ["--data-dir", root, "--out", tmp_path / "out", "--n-classes", "2", "--skip-bad"]
    argv += ["--n-images", "all"]
    assert exit_code(prepare_main, [*argv, "--split", "0.6,0.2,0.2"]) == 0


def test_binary_0_255_masks_and_anti_aliased_edges(tmp_path: Path, capsys) -> None:
    """0/255 masks read as class 1; in-between values (smoothed edges) thresholded at 128, by
    every reader: prepare (and so training), evaluation's labels, the writer's ground truth."""
    root = write_folder(tmp_path / "binary", 4)
    truth = {}
    for i, (name, mask) in enumerate(masks_of(4).items()):
        stored = (mask > 0) * np.uint8(255)
        if i % 2:  # anti-aliased: a ramp of grey values along the edges
            stored = cv2.GaussianBlur(stored, (5, 5), 0)
            assert len(np.unique(stored)) > 3
        truth[name] = (stored >= 128).astype(np.uint8)
        cv2.imwrite(str(root / "masks" / f"{Path(name).stem}.png"), stored)
    out = tmp_path / "out"
    argv = ["--data-dir", root, "--out", out, "--n-images", "all", "--split", "2,1,1"]
    assert exit_code(prepare_main, argv) == 0
    warning = capsys.readouterr().err
    assert "2 mask(s) of" in warning and "e.g. part01.png): thresholded at 128" in warning
    assert json.loads((out / "prepare.json").read_text())["masks_thresholded"] == 2
    split = layouts.read_split(out / "split.csv")
    every = layouts.folder_labels(root, None)  # evaluation's labels: the same masks
    for labels in (split, every):
        for row in labels.to_dict("records"):
            mask = truth[row["ImageId"]]
            np.testing.assert_array_equal(rle.class_mask(layouts.row_masks(row), mask.shape), mask)
    for name, mask in truth.items():  # the writer's ground truth
        np.testing.assert_array_equal(layouts.read_mask(layouts.mask_path(root, name)), mask)


def test_crop_pads_the_images_smaller_than_it(root: Path, tmp_path: Path, caplog) -> None:
    """128x192 crops of 96x160 and 128x192 images: the small ones padded, mask padding 0."""
    from steelseg.dataset import SteelDataModule

    masks = {n: m for n, m in masks_of().items() if m.shape == SIZES[0]}  # the 96x160 ones
    for name, mask in masks.items():
        mask[80:, :] = 1  # a defect along the bottom edge: a reflected mask would show it below
        cv2.imwrite(str(layouts.mask_path(root, name)), mask)
    caplog.set_level("INFO", logger="steelseg.dataset")
    dm = SteelDataModule(
        str(root), str(tmp_path / "prepared"), None, crop="128x192", n_classes=2, num_workers=0
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_crop == (128, 192)
    assert re.search(
        r"\d+ of \d+ training images are smaller than the 128x192 crop \(e.g. part\d\d.jpg, "
        r"96x160\): padded to it",
        caplog.text,
    )
    train = dm.datasets["train"]
    i = next(k for k, iid in enumerate(train.ids) if iid in masks)  # a 96x160 training image
    sample = train[i]
    assert sample["image"].shape == sample["mask"].shape == (1, 128, 192)
    assert not sample["mask"][:, 96:].any() and not sample["mask"][:, :, 160:].any()
    np.testing.assert_array_equal(sample["mask"][0, :96, :160].numpy(), masks[train.ids[i]] > 0)
    image = cv2.imread(str(root / "images" / train.ids[i]), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(sample["image"][0, :96, :160].numpy(), image)
    np.testing.assert_array_equal(sample["image"][0, 96, :160].numpy(), image[94])  # reflected
    assert dm.datasets["val"][0]["image"].shape[1:] in SIZES  # validation: whole images


def _quickstart_on_a_folder(root: Path) -> steelseg.dataset.SteelDataModule:
    """The data of ``steelseg-train experiment=quickstart data=folder data.root=ROOT`` (the
    fixture's 2 classes)."""
    from hydra.utils import instantiate

    from steelseg import config

    command = ["experiment=quickstart", "data=folder", f"data.root={root}"]
    cfg = config.compose([*command, "data.n_classes=2", "model.classes=2"])
    assert cfg.data.synthetic.n_images == 400  # the experiment's generator, composed after data
    return instantiate(cfg.data)


def test_quickstart_on_a_folder_generates_no_synthetic_data(root: Path, caplog) -> None:
    caplog.set_level("INFO", logger="steelseg.dataset")
    dm = _quickstart_on_a_folder(root)
    dm.prepare_data()
    assert "no synthetic data is generated (data.synthetic ignored)" in caplog.text
    assert sorted(p.name for p in root.iterdir()) == ["images", "masks", "prepared"]


def test_crop_larger_than_every_image_follows_the_data(root: Path, caplog) -> None:
    """quickstart's 256x416 crop on 96x160 and 128x192 images: 96x160 crops, nothing padded."""
    caplog.set_level("INFO", logger="steelseg.dataset")
    dm = _quickstart_on_a_folder(root)
    dm.prepare_data()
    dm.setup("fit")
    assert (
        "data.crop=256x416 is larger than every image (smallest 96x160): training on 96x160 "
        "crops" in caplog.text
    )
    assert "padded" not in caplog.text
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (len(dm.datasets["train"]), 1, 96, 160)  # one batch of all
    assert batch["mask"].shape == (len(dm.datasets["train"]), 2, 96, 160)  # 2 classes


# ----------------------------------------------------------------------------- prepare
def test_prepare_command_on_a_folder(root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["--data-dir", root, "--out", out, "--n-classes", "2", "--n-images", "all"]
    assert exit_code(prepare_main, argv) == 0
    assert "train 8, val 1, test 1" in capsys.readouterr().out
    split = layouts.read_split(out / "split.csv")
    assert layouts.data_classes(list(split.columns)) == 2
    assert {tuple(s) for s in split[["height", "width"]].values} == set(SIZES)
    meta = json.loads((out / "prepare.json").read_text())
    assert meta["params"]["n_classes"] == 2
    assert "train_csv_sha256" not in meta
    assert meta[layouts.MASKS_DIGEST] == layouts.labels_digest(root)[1]
    # a sample decodes at its own size, class ids intact
    row = split.to_dict("records")[0]
    image, mask = load_sample(
        root, row["ImageId"], layouts.row_masks(row), None, layouts.row_shape(row)
    )
    np.testing.assert_array_equal(mask, masks_of()[row["ImageId"]])
    assert image.shape == mask.shape
    # the same command again reuses the split
    before = (out / "split.csv").stat().st_mtime_ns
    assert exit_code(prepare_main, argv) == 0
    assert (out / "split.csv").stat().st_mtime_ns == before


def test_datamodule_keys_the_split_by_n_classes_and_checks_the_masks(root, tmp_path) -> None:
    from steelseg.dataset import SteelDataModule

    def dm(n_classes: int, root: Path = root) -> SteelDataModule:
        return SteelDataModule(
            str(root), None, None, crop="64x64", n_classes=n_classes, classes=2, num_workers=0
        )

    assert dm(2).params["n_classes"] == 2
    assert dm(2).prepared_dir != dm(3).prepared_dir  # another n_classes, another split
    # the Kaggle layout's parameters (and so its prepared folders) are as before
    kaggle = tmp_path / "kaggle"
    (kaggle / "train_images").mkdir(parents=True)
    assert "n_classes" not in dm(2, kaggle).params
    data = dm(2)
    data.prepare_data()
    data.setup("fit")
    assert data.uniform is False and data.cache_size() is None  # two sizes: no cache
    assert data.datasets["train"][0]["mask"].shape == (2, 64, 64)
    with pytest.raises(ValueError, match=r"holds the value 2, above data.n_classes=1"):
        dm(1).prepare_data()
    # a mask changed since: the prepared split is refused
    mask = masks_of()["part03.png"]
    mask[0, 0] = 2
    cv2.imwrite(str(root / "masks" / "part03.png"), mask)
    with pytest.raises(ValueError, match=r"was made from another masks/ \(sha256"):
        dm(2).prepare_data()


# ----------------------------------------------------------------------------- every command
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A 2-class model trained (2 batches) on a folder layout with the real config:
    (data root, last checkpoint, prepared folder). Shared read-only.

    quickstart's 256x416 crop is larger than every image: training follows the data (96x160
    crops); its synthetic generator is ignored for a folder."""
    from omegaconf import open_dict

    from steelseg import config
    from steelseg.train import train

    tmp = tmp_path_factory.mktemp("folder_run")
    root = write_folder(tmp / "plant")
    overrides = [
        "experiment=quickstart",  # the tiny CPU model: mobilenetv3_small, no weights, grey in
        "data=folder",
        f"data.root={root}",
        "data.n_classes=2",
        "model.classes=2",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
    ]
    cfg = config.compose(overrides, output_dir=tmp / "run")
    with open_dict(cfg):
        cfg.data.prepared_dir = str(tmp / "prepared")
    assert cfg.data.n_classes == 2 and cfg.data.crop == "256x416"
    metrics = train(cfg)
    assert "test/iou" in metrics  # tested on whole images of both sizes
    return root, tmp / "run" / "checkpoints" / "last.ckpt", tmp / "prepared"


def test_predict_a_folder_with_ground_truth_from_its_masks(folder_run, tmp_path) -> None:
    from steelseg.cli.predict import main as predict_main

    root, ckpt, _ = folder_run
    out = tmp_path / "pred"
    # --runtime torch: no runtime measurement (auto's), which is not what this test is about
    argv = [ckpt, root, "--out", out, "--no-progress", "--runtime", "torch"]
    assert exit_code(predict_main, argv) == 0
    stems = sorted(f"{Path(i).stem}.png" for i in masks_of())
    assert sorted(p.name for p in (out / "panels").iterdir()) == stems  # ground truth: masks/
    for name, truth in masks_of().items():
        saved = cv2.imread(str(out / "masks" / f"{Path(name).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert saved.shape == truth.shape  # at the image's own size
        panel = cv2.imread(str(out / "panels" / f"{Path(name).stem}.png"))
        assert panel.shape[1] == truth.shape[1]
    summary = json.loads((out / "predict.json").read_text())
    assert summary["images"] == summary["panels"] == len(stems)
    predictions = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(predictions["ImageId"]) == set(masks_of())  # a row per image (and class)
    # its images/ folder alone: the same ground truth
    out2 = tmp_path / "pred2"
    assert exit_code(predict_main, [*argv[:1], root / "images", *argv[2:3], out2, *argv[4:]]) == 0
    assert sorted(p.name for p in (out2 / "panels").iterdir()) == stems


def test_truth_of_a_folder_is_the_merged_mask_at_the_image_size(root: Path) -> None:
    from steelseg.inputs import collect_inputs
    from steelseg.writer import _Truth

    sources, empty = collect_inputs([root])
    assert not empty and [s.image_id for s in sources] == sorted(masks_of())
    assert {s.labels for s in sources} == {root / "masks"}
    truth = _Truth(sources)
    for s in sources:
        expected = masks_of()[s.image_id]
        np.testing.assert_array_equal(truth.mask(s, expected.shape), expected > 0)
        assert truth.mask(s, (7, 7)) is None  # not its size: no ground truth
    (root / "masks" / "part00.png").unlink()
    assert truth.mask(sources[0], masks_of()["part00.jpg"].shape) is None  # unlabelled


def test_evaluate_a_folder(folder_run, tmp_path) -> None:
    from helpers import eval_ckpt

    root, ckpt, prepared = folder_run
    result = eval_ckpt(ckpt, split="test", out=tmp_path / "eval", progress=False, max_panels=0)
    split = layouts.read_split(prepared / "split.csv")
    assert result["n_images"] == (split["split"] == "test").sum() == 1
    assert 0.0 <= result["metrics"]["threshold_only"]["pixel"]["iou"] <= 1.0
    # every labelled image of the folder, nothing prepared
    every = eval_ckpt(ckpt, "all", root, out=tmp_path / "all", progress=False, max_panels=0)
    assert every["n_images"] == len(masks_of())


def test_evaluate_finds_the_default_split_of_a_folder_run(root: Path) -> None:
    from steelseg.dataset import SteelDataModule

    data = {"root": str(root), "n_images": None, "split": [0.8, 0.1, 0.1], "n_classes": 2}
    dm = SteelDataModule(str(root), None, None, (0.8, 0.1, 0.1), crop="64x64", n_classes=2)
    assert prep.prepared_dir_for(data, root) == dm.prepared_dir  # as labelled_split looks


def test_tune_a_folder_run_per_class(folder_run) -> None:
    """steelseg-tune on a folder run: its own split, images of two sizes, 2 classes."""
    from helpers import tune_ckpt
    from steelseg.postprocess import ClassPostProcess
    from steelseg.tune import Grid

    _, ckpt, _ = folder_run
    grid = Grid(thresholds=(0.5,), min_component_areas=(0,), min_total_areas=(0, 100))
    result = tune_ckpt(ckpt, grid=grid, save=False, progress=False)
    assert isinstance(result.postprocess, ClassPostProcess) and result.postprocess.n_classes == 2
    assert result.n_images > 0 and result.score >= result.baseline
