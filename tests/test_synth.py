"""Tests of the synthetic Severstal-layout data generator (steelseg.synth)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import exit_code
from steelseg import synth
from steelseg.cli.synth import main as synth_main
from steelseg.rle import decode, read_annotations

N_SAMPLES = 200  # make_image samples for the distribution tests (~6 s)


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, dict[int, np.ndarray]]]:
    rng = np.random.default_rng(12345)
    return [synth.make_image(rng) for _ in range(N_SAMPLES)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.generate(
        tmp_path_factory.mktemp("synth") / "data", n_images=8, seed=3, n_test=3, progress=False
    )


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_make_image_types(samples):
    for image, masks in samples[:20]:
        assert image.shape == (256, 1600) and image.dtype == np.uint8
        assert set(masks) <= {1, 2, 3, 4}
        for mask in masks.values():
            assert mask.shape == (256, 1600) and mask.dtype == np.uint8
            assert mask.any() and mask.max() == 1


def test_make_image_deterministic():
    a_img, a_masks = synth.make_image(np.random.default_rng(7))
    b_img, b_masks = synth.make_image(np.random.default_rng(7))
    c_img, _ = synth.make_image(np.random.default_rng(8))
    np.testing.assert_array_equal(a_img, b_img)
    assert a_masks.keys() == b_masks.keys()
    for cls in a_masks:
        np.testing.assert_array_equal(a_masks[cls], b_masks[cls])
    assert not np.array_equal(a_img, c_img)


def test_class_masks_never_overlap(samples):
    for _, masks in samples:
        if masks:
            assert np.sum(list(masks.values()), axis=0).max() <= 1


def test_class_frequencies(samples):
    # Kaggle: 5,902 of 12,568 images are defect-free (0.47; binomial sd over 200 is 0.035).
    free = np.mean([not masks for _, masks in samples])
    assert 0.35 <= free <= 0.60
    counts = {cls: sum(cls in masks for _, masks in samples) for cls in (1, 2, 3, 4)}
    assert max(counts, key=counts.get) == 3
    assert counts[3] > 2 * max(counts[1], counts[2], counts[4])


def test_defects_visible_inside_masks(samples):
    # The masks must carry the signal: more fine contrast inside than in a ring around them,
    # or a clear shift of the grey level (as on real defects).
    ratios = []
    for image, masks in samples:
        grey = image.astype(np.float32)
        fine = grey - cv2.GaussianBlur(grey, (0, 0), 2)
        for mask in masks.values():
            ring = cv2.dilate(mask, np.ones((21, 21), np.uint8)) > mask
            inside = mask > 0
            contrast = fine[inside].std() / fine[ring].std()
            shift = abs(grey[inside].mean() - grey[ring].mean()) / grey[ring].std()
            ratios.append(max(contrast - 1, shift))
    assert np.median(ratios) > 0.5


def test_grey_levels_like_kaggle(samples):
    # Real frames: mean grey 90-145, std 17-30 (margins included).
    means = [image.mean() for image, _ in samples[:40]]
    stds = [image.std() for image, _ in samples[:40]]
    assert 80 < np.median(means) < 140
    assert 12 < np.median(stds) < 40


def test_layout(dataset):
    train = sorted(p.name for p in (dataset / "train_images").iterdir())
    test = sorted(p.name for p in (dataset / "test_images").iterdir())
    assert len(train) == 8 and len(test) == 3 and not set(train) & set(test)
    for name in train + test:
        assert re.fullmatch(r"[0-9a-f]{9}\.jpg", name)
    image = cv2.imread(str(dataset / "train_images" / train[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (256, 1600, 3) and image.dtype == np.uint8
    channels = image.astype(int)
    assert np.abs(channels[..., 0] - channels[..., 1]).max() <= 2
    assert np.abs(channels[..., 0] - channels[..., 2]).max() <= 2
    assert not list(dataset.rglob("*.tmp"))


def test_train_csv(dataset):
    rows = read_rows(dataset / "train.csv")
    assert rows[0] == ["ImageId", "ClassId", "EncodedPixels"]
    ann = read_annotations(dataset / "train.csv")
    assert len(ann) == len(rows) - 1 > 0
    train = {p.name for p in (dataset / "train_images").iterdir()}
    assert set(ann["ImageId"]) <= train
    for image_id, group in ann.groupby("ImageId"):
        masks = [decode(rle) for rle in group["EncodedPixels"]]
        assert all(m.any() for m in masks)
        assert np.sum(masks, axis=0).max() <= 1, image_id


def test_sample_submission(dataset):
    rows = read_rows(dataset / "sample_submission.csv")
    assert rows[0] == ["ImageId", "EncodedPixels", "ClassId"]
    test = sorted(p.name for p in (dataset / "test_images").iterdir())
    assert rows[1:] == [[name, "1 1", "0"] for name in test]


def test_generate_deterministic(dataset, tmp_path):
    again = synth.generate(tmp_path / "again", n_images=8, seed=3, n_test=3, progress=False)
    for name in ("train.csv", "sample_submission.csv"):
        assert (again / name).read_bytes() == (dataset / name).read_bytes()
    for path in (dataset / "train_images").iterdir():
        np.testing.assert_array_equal(
            cv2.imread(str(path)), cv2.imread(str(again / "train_images" / path.name))
        )
    other = synth.generate(tmp_path / "other", n_images=8, seed=4, n_test=3, progress=False)
    assert (other / "train.csv").read_bytes() != (dataset / "train.csv").read_bytes()


def test_regenerate_in_place_removes_stale_images(tmp_path):
    out = tmp_path / "data"
    synth.generate(out, n_images=4, seed=0, n_test=2, progress=False)
    synth.generate(out, n_images=2, seed=0, n_test=1, progress=False)
    assert len(list((out / "train_images").iterdir())) == 2
    assert len(list((out / "test_images").iterdir())) == 1
    ann = read_annotations(out / "train.csv")
    assert set(ann["ImageId"]) <= {p.name for p in (out / "train_images").iterdir()}


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(FileExistsError, match="not made by steelseg-synth"):
        synth.generate(tmp_path, n_images=1, progress=False)
    assert (tmp_path / "train.csv").read_text() == "ImageId,ClassId,EncodedPixels\n"


@pytest.mark.parametrize("kwargs", [dict(n_images=0), dict(n_test=-1), dict(seed=-1)])
def test_generate_rejects_bad_args(tmp_path, kwargs):
    with pytest.raises(ValueError):
        synth.generate(tmp_path / "data", **{"n_images": 1, **kwargs})


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        exit_code(
            synth_main, ["--out", out, "--n-images", "2", "--n-test", "1", "--seed", "5", "--quiet"]
        )
        == 0
    )
    assert len(list((out / "train_images").iterdir())) == 2
    assert len(list((out / "test_images").iterdir())) == 1


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--n-images", "0"],
        ["--n-images", "-3"],
        ["--n-images", "many"],
        ["--seed", "-1"],
        ["--n-test", "-1"],
    ],
)
def test_cli_bad_args(tmp_path, capsys, args):
    argv = args if not args else ["--out", str(tmp_path / "x"), *args]
    assert exit_code(synth_main, argv) != 0
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_foreign_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert exit_code(synth_main, ["--out", tmp_path, "--n-images", "1", "--quiet"]) == 2
    assert "not made by steelseg-synth" in capsys.readouterr().err


def test_rerun_after_interruption(tmp_path):
    out = tmp_path / "data"
    synth.generate(out, n_images=2, seed=1, n_test=1, progress=False)
    # As if a run died after the marker and some images: no CSV, a temporary file left.
    (out / "train.csv").unlink()
    (out / "train_images" / "0123456789.jpg.tmp").write_bytes(b"partial")
    synth.generate(out, n_images=2, seed=1, n_test=1, progress=False)
    assert (out / "train.csv").is_file()
    assert not list(out.rglob("*.tmp"))


def test_older_generator_data_is_made_again(tmp_path):
    # A data set written by an earlier version of the generator looks different: it is made
    # again, in place, never reused as if it were this version's.
    out = synth.generate(tmp_path / "data", n_images=2, seed=1, n_test=1, progress=False)
    marker = json.loads((out / synth.MARKER).read_text())
    assert marker["version"] == synth.VERSION and marker["nuisances"]["edge"] > 0
    marker["version"] = synth.VERSION - 1
    (out / synth.MARKER).write_text(json.dumps(marker))
    assert not synth.is_complete(out, 2, 1, 1)
    synth.generate(out, n_images=2, seed=1, n_test=1, progress=False)
    assert synth.is_complete(out, 2, 1, 1)
