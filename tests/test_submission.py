"""steelseg.submission: Kaggle submission files, written and checked in both sample layouts.

The score is computed by a scorer written here, with its own RLE decoder, so that a mistake in
steelseg.rle (row- instead of column-major, 0- instead of 1-indexed) cannot cancel itself out.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from steelseg import rle, submission, synth

H, W = rle.SHAPE
IDS = ("c0ffee001.jpg", "0a1b2c3d4.jpg", "ffe0d1c2b.jpg")  # not sorted: order must be kept
HEADERS = {  # sample header -> its layout; Kaggle's first, then the columns reordered
    ("ImageId_ClassId", "EncodedPixels"): "2019",
    ("EncodedPixels", "ImageId_ClassId"): "2019",
    ("ImageId", "EncodedPixels", "ClassId"): "current",
    ("ClassId", "ImageId", "EncodedPixels"): "current",
}
KAGGLE = {
    "2019": ("ImageId_ClassId", "EncodedPixels"),
    "current": ("ImageId", "EncodedPixels", "ClassId"),
}


# ----------------------------------------------------------------------------- independent scorer
def kaggle_decode(encoded: str, shape: tuple[int, int]) -> np.ndarray:
    """Pairs ``start length``, pixels numbered from 1 top to bottom, then left to right."""
    h, w = shape
    flat = np.zeros(h * w, dtype=bool)
    numbers = [int(t) for t in encoded.split()]
    for start, length in zip(numbers[0::2], numbers[1::2]):
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(w, h).T  # column by column


def read_predictions(path: Path) -> dict[tuple[str, int], str]:
    """(ImageId, ClassId) -> EncodedPixels of a submission, in either layout."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        if "ImageId_ClassId" in row:
            image_id, _, c = row["ImageId_ClassId"].rpartition("_")
        else:
            image_id, c = row["ImageId"], row["ClassId"]
        out[image_id, int(c)] = row["EncodedPixels"]
    return out


def kaggle_score(path: Path, truth: Mapping[str, np.ndarray], shape=rle.SHAPE) -> float:
    """Mean Dice over every (image, class) pair of ``truth``; 1 where both masks are empty."""
    predicted = read_predictions(path)
    dice = []
    for image_id, masks in truth.items():
        for c in range(1, 5):
            p = kaggle_decode(predicted[image_id, c], shape)
            t = masks[c - 1].astype(bool)
            total = p.sum() + t.sum()
            dice.append(1.0 if total == 0 else 2 * (p & t).sum() / total)
    return float(np.mean(dice))


def test_the_scorer_decodes_by_hand() -> None:
    mask = kaggle_decode("1 1 258 2", (256, 1600))
    assert mask.sum() == 3 and mask[0, 0] and mask[1, 1] and mask[2, 1]
    assert np.argwhere(kaggle_decode("3 2", (3, 4))).tolist() == [
        [0, 1],
        [2, 0],
    ]  # crosses a column


# ----------------------------------------------------------------------------- helpers
def write_sample(path: Path, columns: Sequence[str], ids: Sequence[str] = IDS) -> Path:
    """A sample_submission.csv as Kaggle ships it: "1 1" everywhere; current: ClassId 0."""
    rows = []
    for image_id in ids:
        if "ImageId_ClassId" in columns:
            rows += [{"ImageId_ClassId": f"{image_id}_{c}", "EncodedPixels": "1 1"} for c in "1234"]
        else:
            rows.append({"ImageId": image_id, "EncodedPixels": "1 1", "ClassId": "0"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def truth_masks(ids: Sequence[str] = IDS) -> dict[str, np.ndarray]:
    """Known masks (4, H, W): each image a different mix of classes, one class left empty."""
    out = {}
    for k, image_id in enumerate(ids):
        m = np.zeros((4, H, W), dtype=np.uint8)
        m[0, 10 + k : 60, 100:180] = 1  # class 1: a block
        m[2, :, 400 + 10 * k : 420 + 10 * k] = 1  # class 3: full height, runs join across columns
        if k != 1:
            m[3, 200:256, 1500:1600] = 1  # class 4: in the bottom-right corner, the last pixel
        out[image_id] = m  # class 2 empty
    return out


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message
    return message


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(params=list(HEADERS), ids=lambda c: ",".join(c))
def sample(request: pytest.FixtureRequest, tmp_path: Path) -> submission.Sample:
    return submission.read_sample(write_sample(tmp_path / "sample_submission.csv", request.param))


# ----------------------------------------------------------------------------- the score
@pytest.mark.parametrize("layout", submission.LAYOUTS)
def test_a_perfect_prediction_scores_one(layout: str, tmp_path: Path) -> None:
    sample = submission.read_sample(write_sample(tmp_path / "sample.csv", KAGGLE[layout]))
    truth = truth_masks()
    out = submission.write(tmp_path / "submission.csv", sample, truth)
    assert kaggle_score(out, truth) == 1.0


@pytest.mark.parametrize("layout", submission.LAYOUTS)
@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        ("class 1 missed", 11 / 12),  # 3 images x 4 classes; one pair scores 0
        ("class 2 invented", 11 / 12),  # a defect where the truth is empty also scores 0
        ("class 3 half", (11 + 2 / 3) / 12),  # 20 columns predicted as 10: Dice 2*10/(20+10)
    ],
)
def test_one_wrong_class_on_one_image_costs_its_pair(
    layout: str, mistake: str, expected: float, tmp_path: Path
) -> None:
    sample = submission.read_sample(write_sample(tmp_path / "sample.csv", KAGGLE[layout]))
    truth = truth_masks()
    predicted = {i: m.copy() for i, m in truth.items()}
    wrong = predicted[IDS[1]]
    if mistake == "class 1 missed":
        wrong[0] = 0
    elif mistake == "class 2 invented":
        wrong[1, 100:120, 700:760] = 1
    else:
        wrong[2, :, 420:] = 0  # image 1's band is columns 410..429
    out = submission.write(tmp_path / "submission.csv", sample, predicted)
    assert kaggle_score(out, truth) == pytest.approx(expected, abs=1e-12)
    assert submission.check(out, sample)["non_empty"] == 8 + (mistake == "class 2 invented") - (
        mistake == "class 1 missed"
    )


# ----------------------------------------------------------------------------- round trip
def test_round_trip_keeps_the_sample_columns_and_image_order(
    sample: submission.Sample, tmp_path: Path
) -> None:
    truth = truth_masks()
    extra = {**truth, "not-in-sample.jpg": np.zeros((4, H, W), bool)}  # left out
    out = submission.write(tmp_path / "submission.csv", sample, extra)

    with open(out, newline="") as f:
        header, *rows = list(csv.reader(f))
    assert tuple(header) == sample.columns
    assert len(rows) == 4 * len(IDS)
    predicted = read_predictions(out)
    assert list(dict.fromkeys(i for i, _ in predicted)) == list(IDS)
    assert [c for _, c in predicted] == [1, 2, 3, 4] * len(IDS)
    for image_id, masks in truth.items():
        for c in range(1, 5):
            decoded = kaggle_decode(predicted[image_id, c], rle.SHAPE)
            assert np.array_equal(decoded, masks[c - 1]), (image_id, c)
            assert (predicted[image_id, c] == "") == (not masks[c - 1].any())
    assert submission.check(out, sample) == {
        "images": 3,
        "rows": 12,
        "non_empty": 8,
        "layout": HEADERS[sample.columns],
    }


def test_read_sample_gives_layout_columns_and_unique_ids(sample: submission.Sample) -> None:
    assert sample.layout == HEADERS[sample.columns]
    assert sample.image_ids == IDS
    assert sample.path.name == "sample_submission.csv"


def test_write_takes_bool_masks_and_a_smaller_shape(tmp_path: Path) -> None:
    sample = submission.read_sample(write_sample(tmp_path / "sample.csv", KAGGLE["current"]))
    masks = {i: np.zeros((4, 3, 4), dtype=bool) for i in IDS}
    masks[IDS[0]][1, 2, 0] = masks[IDS[0]][1, 0, 1] = True
    out = submission.write(tmp_path / "submission.csv", sample, masks, shape=(3, 4))
    assert read_predictions(out)[IDS[0], 2] == "3 2"
    assert submission.check(out, sample, shape=(3, 4))["non_empty"] == 1
    with pytest.raises(ValueError, match=r"line 3 \(ImageId 'c0ffee001.jpg', ClassId 2\).*past"):
        submission.check(out, sample, shape=(2, 1))


# ----------------------------------------------------------------------------- the synthetic data
def test_a_synthetic_sample_is_current_and_matches_its_test_images(tmp_path: Path) -> None:
    root = synth.generate(tmp_path / "synthetic", n_images=2, seed=0, n_test=3, progress=False)
    sample = submission.read_sample(root / "sample_submission.csv")
    assert sample.layout == "current"
    assert sample.columns == ("ImageId", "EncodedPixels", "ClassId")
    assert len(sample.image_ids) == 3
    submission.check_images(sample, root / "test_images")
    empty = {i: np.zeros((4, H, W), bool) for i in sample.image_ids}
    out = submission.write(tmp_path / "submission.csv", sample, empty)
    assert submission.check(out, sample) == {
        "images": 3,
        "rows": 12,
        "non_empty": 0,
        "layout": "current",
    }
    with pytest.raises(ValueError) as error:
        submission.check_images(sample, root / "train_images")
    assert one_line(error) == (
        f"sample_submission.csv names 3 image(s) not in train_images/: "
        f"{', '.join(sample.image_ids)}; is it the sample of these images?"
    )


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"^sample_submission.csv is empty; .*'ImageId,EncodedPixels,ClassId'"),
        ("ImageId,EncodedPixels,ClassId\n", "has a header but no rows"),
        ("ImageId,ClassId\na.jpg,1\n", r"header 'ImageId,ClassId'; expected the current"),
        ("ImageId,EncodedPixels,ClassId\na.jpg,1 1,0\n../b.jpg,1 1,0\n", "line 3: .*plain file"),
        ("ImageId,EncodedPixels,ClassId\n,1 1,0\n", "line 2: ImageId '' is empty"),
        ("ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg_5,\n", "line 3: .*'a.jpg_5' is not"),
        ("ImageId_ClassId,EncodedPixels\na.jpg,1 1\n", "line 2: .*'a.jpg' is not '<ImageId>_"),
        ("ImageId_ClassId,EncodedPixels\n_1,1 1\n", r"line 2: .*'_1' is not"),
        ("ImageId,EncodedPixels,ClassId\na.jpg,1 1,0,extra\n", "more fields than its header"),
    ],
)
def test_a_bad_sample_is_one_line(text: str, match: str, tmp_path: Path) -> None:
    path = tmp_path / "sample_submission.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as error:
        submission.read_sample(path)
    one_line(error)


def test_a_missing_sample_or_test_folder_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sample submission not found"):
        submission.read_sample(tmp_path / "sample_submission.csv")
    sample = submission.read_sample(write_sample(tmp_path / "s.csv", KAGGLE["2019"]))
    with pytest.raises(FileNotFoundError, match="test image folder not found") as error:
        submission.check_images(sample, tmp_path / "test_images")
    one_line(error)


def test_check_images_names_five_missing_and_counts(tmp_path: Path) -> None:
    ids = [f"{k:09x}.jpg" for k in range(8)]
    sample = submission.read_sample(write_sample(tmp_path / "s.csv", KAGGLE["2019"], ids))
    folder = tmp_path / "test_images"
    folder.mkdir()
    (folder / ids[0]).write_bytes(b"")  # by name: the images are read later, by the predictor
    with pytest.raises(ValueError) as error:
        submission.check_images(sample, folder)
    assert one_line(error) == (
        "s.csv names 7 image(s) not in test_images/: " + ", ".join(ids[1:6]) + " and 2 more; "
        "is it the sample of these images?"
    )
    for image_id in ids[1:]:
        (folder / image_id).write_bytes(b"")
    submission.check_images(sample, folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: m.pop(IDS[2]),
            "no prediction for 1 image(s) of the sample: ffe0d1c2b.jpg; predict every image "
            "s.csv names",
        ),
        (
            lambda m: m.update({IDS[1]: m[IDS[1]][:1]}),
            "the model predicts 1 class(es); a Kaggle submission needs 4: train with "
            "model.classes=4",
        ),
        (
            lambda m: m.update({IDS[1]: m[IDS[1]][0]}),  # a binary (H, W) mask
            "the model predicts 1 class(es); a Kaggle submission needs 4: train with "
            "model.classes=4",
        ),
        (
            lambda m: m.update({IDS[0]: np.zeros((4, 128, 800), np.uint8)}),
            "the mask of c0ffee001.jpg has shape (4, 128, 800), expected (4, 256, 1600) "
            "(class, height, width); predict at the images' full size",
        ),
        (
            lambda m: m.update({IDS[0]: m[IDS[0]] * 0.9}),
            "the mask of c0ffee001.jpg is float64, expected bool or uint8; threshold the "
            "probabilities first",
        ),
    ],
)
def test_bad_masks_are_one_line_and_write_nothing(change, message: str, tmp_path: Path) -> None:
    sample = submission.read_sample(write_sample(tmp_path / "s.csv", KAGGLE["current"]))
    masks = truth_masks()
    change(masks)
    out = tmp_path / "out" / "submission.csv"
    before = files_in(tmp_path)
    with pytest.raises(ValueError) as error:
        submission.write(out, sample, masks)
    assert one_line(error) == message
    assert files_in(tmp_path) == before and not out.parent.exists()
    # An earlier submission stays as it was.
    out.parent.mkdir()
    out.write_text("earlier\n")
    with pytest.raises(ValueError):
        submission.write(out, sample, masks)
    assert out.read_text() == "earlier\n" and files_in(out.parent) == ["submission.csv"]


def edit(path: Path, change) -> Path:
    """Apply ``change`` to the lines of a CSV (header included) and write them back."""
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")
    return path


@pytest.mark.parametrize("layout", submission.LAYOUTS)
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda ls: [",".join(reversed(ls[0].split(","))), *ls[1:]], r"^submission.csv line 1: "),
        (lambda ls: ls[:-1], r"no row for ImageId 'ffe0d1c2b.jpg' ClassId 4; Kaggle needs"),
        (lambda ls: ls[:5], r"no row for ImageId '0a1b2c3d4.jpg' ClassId 1 \(and 7 more"),
        (lambda ls: [*ls, ls[3]], r"line 14: a second row for ImageId 'c0ffee001.jpg' ClassId 3"),
        (
            lambda ls: [*ls, ls[3].replace("c0ffee001", "abcdef012")],
            r"line 14: ImageId 'abcdef012.jpg' is not in s.csv; submit only",
        ),
    ],
)
def test_check_names_the_first_problem_and_its_line(
    layout: str, change, match: str, tmp_path: Path
) -> None:
    sample = submission.read_sample(write_sample(tmp_path / "s.csv", KAGGLE[layout]))
    out = submission.write(tmp_path / "submission.csv", sample, truth_masks())
    submission.check(out, sample)
    with pytest.raises(ValueError, match=match) as error:
        submission.check(edit(out, change), sample)
    one_line(error)


def set_pixels(path: Path, line: int, encoded: str) -> Path:
    """Replace the EncodedPixels of one line of a CSV."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows[line - 1][rows[0].index("EncodedPixels")] = encoded
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return path


@pytest.mark.parametrize("layout", submission.LAYOUTS)
@pytest.mark.parametrize(
    ("encoded", "problem"),
    [
        ("0 5", "RLE start 0 < 1 (Kaggle runs are 1-indexed)"),
        ("1 2 3", "RLE has an odd number of tokens (3)"),
        ("409599 3", "RLE run (start 409599, length 3) ends at pixel 409601, past the end"),
        ("10 5 12 3", "RLE runs are not increasing or overlap"),
        ("1 x", "RLE token 'x' is not a positive integer"),
    ],
)
def test_check_refuses_an_rle_kaggle_would(
    layout: str, encoded: str, problem: str, tmp_path: Path
) -> None:
    sample = submission.read_sample(write_sample(tmp_path / "s.csv", KAGGLE[layout]))
    out = submission.write(tmp_path / "submission.csv", sample, truth_masks())
    with pytest.raises(ValueError) as error:
        submission.check(set_pixels(out, 8, encoded), sample)
    assert one_line(error).startswith(
        f"submission.csv line 8 (ImageId '0a1b2c3d4.jpg', ClassId 3): {problem}"
    )


@pytest.mark.parametrize("class_id", ["0", "5", "1.0", ""])
def test_check_refuses_a_class_outside_1_to_4(class_id: str, tmp_path: Path) -> None:
    sample = submission.read_sample(write_sample(tmp_path / "s.csv", KAGGLE["current"]))
    out = submission.write(tmp_path / "submission.csv", sample, truth_masks())
    edit(out, lambda ls: [*ls[:3], ls[3].rsplit(",", 1)[0] + "," + class_id, *ls[4:]])
    with pytest.raises(ValueError, match=rf"line 4: ClassId '{class_id}' is not one of 1..4"):
        submission.check(out, sample)


def test_check_of_a_missing_or_empty_file(tmp_path: Path) -> None:
    sample = submission.read_sample(write_sample(tmp_path / "s.csv", KAGGLE["2019"]))
    with pytest.raises(FileNotFoundError, match="submission not found"):
        submission.check(tmp_path / "submission.csv", sample)
    (tmp_path / "submission.csv").write_text("")
    with pytest.raises(ValueError, match="^submission.csv is empty"):
        submission.check(tmp_path / "submission.csv", sample)


# ----------------------------------------------------------------------------- acceptance
def test_a_trained_4_class_models_submission_scores_what_eval_says(
    tiny_ckpt_4gate: Path, synth_root: Path, tmp_path: Path
) -> None:
    """A 4-class gated model trained on synthetic data predicts a Kaggle test folder made of
    its labelled validation images; the scorer above, reading only submission.csv and the
    split's RLE, gives the competition metric steelseg-eval reports for those images."""
    import pandas as pd

    from helpers import eval_ckpt
    from steelseg.cli.predict import main as predict_main

    prepared = tiny_ckpt_4gate.parents[2] / "prepared" / "split.csv"  # the fixture's split
    split = pd.read_csv(prepared, dtype=str, keep_default_na=False)
    val = split[split["split"] == "val"]
    root = tmp_path / "kaggle"
    (root / "test_images").mkdir(parents=True)
    for image_id in val["ImageId"]:
        (root / "test_images" / image_id).symlink_to(synth_root / "train_images" / image_id)
    sample = write_sample(root / "sample_submission.csv", KAGGLE["2019"], val["ImageId"])
    out = tmp_path / "out"
    argv = [str(tiny_ckpt_4gate), str(root), "--out", str(out), "--runtime", "torch"]
    assert predict_main(argv) == 0

    truth = {
        row["ImageId"]: np.stack(
            [kaggle_decode(row[f"EncodedPixels_{c}"], (H, W)) for c in (1, 2, 3, 4)]
        )
        for _, row in val.iterrows()
    }
    score = kaggle_score(out / "submission.csv", truth)
    ev = eval_ckpt(
        tiny_ckpt_4gate, split="val", out=tmp_path / "eval", progress=False, max_panels=0
    )
    assert score == pytest.approx(ev["metrics"]["postprocessed"]["kaggle_dice"], abs=1e-9)
    assert submission.check(out / "submission.csv", submission.read_sample(sample))[
        "images"
    ] == len(val)
