"""steelseg.prepare: Kaggle-layout folder -> stratified split.csv (+ prepare.json, optional cache).

Every test builds a tiny Kaggle-layout folder in tmp_path: 60 constant-grey 1600x256 JPEGs
(see helpers.standard_labels: 24 clean, 27 single-class, 9 multi-class images).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import (
    COMBOS,
    SHAPE,
    combo,
    exit_code,
    grey_of,
    jpeg_bytes,
    standard_labels,
    write_image,
    write_kaggle,
    write_train_csv,
)
from steelseg import prepare as prep
from steelseg import rle
from steelseg.cli.prepare import main as prepare_main

N = sum(COMBOS.values())  # 60
N_DEFECTIVE = N - COMBOS[""]  # 36
N_MULTI = sum(n for c, n in COMBOS.items() if len(c.split()) > 1)  # 9


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def labels() -> dict[str, dict[int, str]]:
    return standard_labels()


def standard_data(root: Path) -> Path:
    labels = standard_labels()
    return write_kaggle(root, labels, "current", greys={iid: grey_of(iid) for iid in labels})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The standard tiny data set, current train.csv layout; shared: tests must not modify it."""
    return standard_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def fresh_data(tmp_path) -> Path:
    """A private copy of the standard data set, for tests that damage it."""
    return standard_data(tmp_path / "data")


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


def read_split(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "split.csv", dtype=str, keep_default_na=False)


def assignment(out: Path) -> dict[str, str]:
    df = read_split(out)
    return dict(zip(df["ImageId"], df["split"]))


def assert_nothing_written(out: Path) -> None:
    """A failed prepare leaves no split.csv, no prepare.json and no temporary files."""
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], f"a failed prepare left {left} in {out}"


def single_class(labels, n):
    return [iid for iid, by in labels.items() if len(by) == 1][:n]


# ----------------------------------------------------------------------------- content
@pytest.mark.parametrize("layout", ["2019", "current"])
def test_split_csv_content(tmp_path, labels, out, layout):
    data = write_kaggle(tmp_path / "data", labels, layout)
    path = prep.prepare(data, out, n_images=None)
    assert path == out / "split.csv"
    df = read_split(out)
    assert list(df.columns) == [
        "ImageId",
        "split",
        "EncodedPixels",
        "defect_pixels",
        "classes",
        "n_classes",
        "height",
        "width",
        "EncodedPixels_1",
        "EncodedPixels_2",
        "EncodedPixels_3",
        "EncodedPixels_4",
    ]
    assert sorted(df["ImageId"]) == sorted(labels)  # clean images (no CSV rows) included
    for row in df.itertuples(index=False):
        by_class = labels[row.ImageId]
        # Classes never overlap and their pixel ranges grow with the class, so the merged
        # canonical RLE is the class RLEs concatenated in class order.
        assert row.EncodedPixels == " ".join(by_class[c] for c in sorted(by_class))
        assert int(row.defect_pixels) == sum(30 + c for c in by_class)
        assert row.classes == combo(by_class)
        assert int(row.n_classes) == len(by_class)
        assert (int(row.height), int(row.width)) == (256, 1600)
        for c in (1, 2, 3, 4):  # one RLE column per class, empty where absent
            assert getattr(row, f"EncodedPixels_{c}") == by_class.get(c, "")
        assert row.split in {"train", "val", "test"}


def test_split_csv_merges_overlapping_classes(tmp_path, out):
    labels = {"a.jpg": {1: "1 10", 2: "5 10", 4: "100 1"}, "b.jpg": {}}
    data = write_kaggle(tmp_path / "data", labels)
    prep.prepare(data, out, n_images=None, split=(1, 0, 0))
    df = read_split(out).set_index("ImageId")
    assert df.loc["a.jpg", "EncodedPixels"] == "1 14 100 1"
    assert df.loc["a.jpg", "defect_pixels"] == "15"
    assert df.loc["a.jpg", "classes"] == "1 2 4"
    assert df.loc["b.jpg", "EncodedPixels"] == "" and df.loc["b.jpg", "n_classes"] == "0"


def test_both_layouts_give_the_same_split(tmp_path, labels):
    old = write_kaggle(tmp_path / "old", labels, "2019")
    new = write_kaggle(tmp_path / "new", labels, "current")
    prep.prepare(old, tmp_path / "o1", n_images=40, seed=5)
    prep.prepare(new, tmp_path / "o2", n_images=40, seed=5)
    assert (tmp_path / "o1" / "split.csv").read_bytes() == (
        tmp_path / "o2" / "split.csv"
    ).read_bytes()


def test_split_csv_sorted_by_split_then_image(data, out):
    prep.prepare(data, out, n_images=None)
    df = read_split(out)
    order = {"train": 0, "val": 1, "test": 2}
    keys = list(zip(df["split"].map(order), df["ImageId"]))
    assert keys == sorted(keys)


def test_prepare_json(data, out):
    prep.prepare(data, out, n_images=50, split="40,5,5", seed=7)
    meta = json.loads((out / "prepare.json").read_text())
    assert meta["counts"] == {"train": 40, "val": 5, "test": 5}
    assert meta["params"]["seed"] == 7
    assert meta["params"]["n_images"] == 50
    assert meta["params"]["split"] == [40.0, 5.0, 5.0]
    assert (
        meta["train_csv_sha256"]
        == hashlib.sha256((data / "train.csv").read_bytes()).hexdigest()[:16]
    )
    assert Path(meta["data_dir"]) == data.resolve()


# ----------------------------------------------------------------------------- counts
@pytest.mark.parametrize(
    ("n_images", "split", "expected"),
    [
        (None, (0.8, 0.1, 0.1), (48, 6, 6)),
        (50, (0.8, 0.1, 0.1), (40, 5, 5)),
        (40, "30,5,5", (30, 5, 5)),
        (20, "0.5,0.25,0.25", (10, 5, 5)),
        (60, (1, 0, 0), (60, 0, 0)),
        (10, "0.7,0.3,0", (7, 3, 0)),
        (7, (0.8, 0.1, 0.1), (5, 1, 1)),
    ],
)
def test_split_counts(data, out, n_images, split, expected):
    prep.prepare(data, out, n_images=n_images, split=split)
    counts = Counter(read_split(out)["split"])
    assert (counts["train"], counts["val"], counts["test"]) == expected


@pytest.mark.parametrize(
    ("n_images", "split", "match"),
    [
        (40, "30,5,4", r"counts summing to the 40"),
        (40, "0.5,0.4,0.2", r"fractions summing to 1"),
        (40, "0.5,0.5", r"three"),
        (40, "a,b,c", r"three numbers"),
        (40, "-1,21,20", r"non-negative"),
        (40, "0,20,20", r"no training images"),
        (61, (0.8, 0.1, 0.1), r"asked for 61 images but the data has 60 images"),
        (0, (0.8, 0.1, 0.1), r"n_images must be >= 1"),
    ],
)
def test_bad_counts_raise_and_write_nothing(data, out, n_images, split, match):
    with pytest.raises(ValueError, match=match):
        prep.prepare(data, out, n_images=n_images, split=split)
    assert_nothing_written(out)


# ----------------------------------------------------------------------------- stratification
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splits_are_stratified_by_class_combination(data, out, labels, seed):
    prep.prepare(data, out, n_images=None, split=(0.5, 0.25, 0.25), seed=seed)
    df = read_split(out)
    total = Counter(combo(by) for by in labels.values())
    for name, share, tol in [("test", 0.25, 1), ("val", 0.25, 2)]:
        # test is drawn first (+-1 per stratum); val from what is left (+-1 of that share)
        got = Counter(df.loc[df["split"] == name, "classes"])
        for c, n in total.items():
            assert abs(got[c] - share * n) <= tol, (name, c, got[c], share * n)
    clean_test = (df.loc[df["split"] == "test", "n_classes"] == "0").sum()
    assert abs(clean_test - 0.25 * COMBOS[""]) <= 1


@pytest.mark.parametrize("seed", [0, 3])
def test_selection_is_stratified(data, out, labels, seed):
    prep.prepare(data, out, n_images=30, seed=seed)
    got = Counter(read_split(out)["classes"])
    total = Counter(combo(by) for by in labels.values())
    for c, n in total.items():
        assert abs(got[c] - n / 2) <= 1, (c, got[c], n / 2)


def test_no_image_in_two_splits_and_full_coverage(data, out, labels):
    prep.prepare(data, out, n_images=None)
    df = read_split(out)
    assert df["ImageId"].is_unique
    assert set(df["ImageId"]) == set(labels)
    groups = [set(df.loc[df["split"] == s, "ImageId"]) for s in ("train", "val", "test")]
    assert sum(map(len, groups)) == N and set().union(*groups) == set(labels)


def test_subset_is_unique_and_from_the_data(data, out, labels):
    prep.prepare(data, out, n_images=25)
    df = read_split(out)
    assert len(df) == 25 and df["ImageId"].is_unique and set(df["ImageId"]) <= set(labels)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_split(data, tmp_path):
    prep.prepare(data, tmp_path / "a", n_images=30, seed=11)
    prep.prepare(data, tmp_path / "b", n_images=30, seed=11)
    assert (tmp_path / "a" / "split.csv").read_bytes() == (
        tmp_path / "b" / "split.csv"
    ).read_bytes()


def test_other_seed_other_split(data, tmp_path):
    prep.prepare(data, tmp_path / "a", n_images=None, seed=1)
    prep.prepare(data, tmp_path / "b", n_images=None, seed=2)
    assert assignment(tmp_path / "a") != assignment(tmp_path / "b")
    prep.prepare(data, tmp_path / "c", n_images=20, seed=1)
    prep.prepare(data, tmp_path / "d", n_images=20, seed=2)
    assert set(assignment(tmp_path / "c")) != set(assignment(tmp_path / "d"))


def test_rerun_into_same_out_overwrites(data, out):
    prep.prepare(data, out, n_images=20, seed=1)
    prep.prepare(data, out, n_images=30, seed=2)
    assert len(read_split(out)) == 30
    assert sorted(p.name for p in out.iterdir()) == ["prepare.json", "split.csv"]


def test_failed_write_leaves_no_split_csv_and_no_temp_file(data, out, monkeypatch):
    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(prep.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        prep.prepare(data, out, n_images=10)
    assert_nothing_written(out)


def test_all_images_defect_free(tmp_path, out):
    labels = {f"{i:02d}.jpg": {} for i in range(10)}
    data = write_kaggle(tmp_path / "data", labels, "current")  # header-only train.csv
    prep.prepare(data, out, n_images=None)
    df = read_split(out)
    assert len(df) == 10
    assert (df["EncodedPixels"] == "").all() and (df["defect_pixels"] == "0").all()
    assert (df["classes"] == "").all() and (df["n_classes"] == "0").all()


@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_all_images_defect_free_future_pandas(tmp_path, out):
    data = write_kaggle(tmp_path / "data", {"a.jpg": {}, "b.jpg": {}}, "current")
    prep.prepare(data, out, n_images=None, split=(1, 0, 0))


# ----------------------------------------------------------------------------- only_defective
@pytest.mark.parametrize("seed", [0, 1])
def test_only_defective_protocol(data, out, labels, seed):
    prep.prepare(
        data,
        out,
        n_images=20,
        split=(0.8, 0, 0.2),
        seed=seed,
        only_defective=True,
        val_fraction=0.25,
    )
    df = read_split(out)
    assert len(df) == 20
    assert (df["n_classes"].astype(int) > 0).all()
    multi = {iid for iid, by in labels.items() if len(by) > 1}
    assert multi <= set(df["ImageId"])  # every multi-class image is used
    counts = Counter(df["split"])
    assert counts["test"] == 4
    assert counts["val"] == round(0.25 * (20 - 4)) == 4
    assert counts["train"] == 12
    # test stratified by number of classes: 9 of 20 images are multi-class
    test_multi = (df.loc[df["split"] == "test", "n_classes"] != "1").sum()
    assert abs(test_multi - 4 * N_MULTI / 20) <= 1


def test_only_defective_val_fraction_of_train(data, out):
    prep.prepare(
        data, out, n_images=None, split=(0.9, 0, 0.1), only_defective=True, val_fraction=0.1
    )
    counts = Counter(read_split(out)["split"])
    assert sum(counts.values()) == N_DEFECTIVE
    test = round(0.1 * N_DEFECTIVE)
    assert counts["test"] == test
    assert counts["val"] == round(0.1 * (N_DEFECTIVE - test))


def test_only_defective_single_class_picks_depend_on_seed(data, tmp_path):
    prep.prepare(
        data, tmp_path / "a", n_images=15, split=(0.8, 0, 0.2), only_defective=True, seed=1
    )
    prep.prepare(
        data, tmp_path / "b", n_images=15, split=(0.8, 0, 0.2), only_defective=True, seed=2
    )
    prep.prepare(
        data, tmp_path / "c", n_images=15, split=(0.8, 0, 0.2), only_defective=True, seed=1
    )
    assert set(assignment(tmp_path / "a")) != set(assignment(tmp_path / "b"))
    assert assignment(tmp_path / "a") == assignment(tmp_path / "c")


def test_only_defective_fewer_than_multi(data, out):
    prep.prepare(data, out, n_images=5, split="4,0,1", only_defective=True)
    df = read_split(out)
    assert len(df) == 5 and (df["n_classes"].astype(int) > 1).all()


def test_only_defective_too_many(data, out):
    with pytest.raises(ValueError, match=r"asked for 37 .* 36 defective images"):
        prep.prepare(data, out, n_images=N_DEFECTIVE + 1, only_defective=True)
    assert_nothing_written(out)


# ----------------------------------------------------------------------------- prepared folder
def test_prepare_json_records_the_params_a_run_is_found_by(data, out):
    """prepare.json's params are prepare_params of prepare()'s settings given as a run's
    ``data`` section (the rest left at their defaults), whose hash names the default folder."""
    prep.prepare(data, out, n_images=30, split="20,5,5", seed=4)
    settings = {"n_images": 30, "split": [20, 5, 5], "seed": 4}
    assert json.loads((out / "prepare.json").read_text())["params"] == prep.prepare_params(
        data, settings
    )


def test_prepared_dir_for_another_copy_of_the_data(tmp_path):
    """A run's prepared_dir counts for its own data root only; another copy of the data has
    the split of the same settings in its default folder."""
    a, b, mine = tmp_path / "a", tmp_path / "b", tmp_path / "mine"
    run = {"root": str(a), "prepared_dir": str(mine), "n_images": 30, "seed": 4}
    assert prep.prepared_dir_for(run) == prep.prepared_dir_for(run, a) == mine
    default = prep.prepared_dir_for({**run, "prepared_dir": None})
    assert default.parent == a / "prepared"
    assert prep.prepared_dir_for(run, b) == b / "prepared" / default.name


# ----------------------------------------------------------------------------- split_file
def write_spec(path: Path, rows) -> Path:
    pd.DataFrame(rows, columns=["ImageId", "split"]).to_csv(path, index=False)
    return path


def test_split_file_reproduces_a_split(data, tmp_path):
    prep.prepare(data, tmp_path / "a", n_images=40, seed=3)
    first = read_split(tmp_path / "a")
    spec = write_spec(
        tmp_path / "spec.csv", first[["ImageId", "split"]].sample(frac=1, random_state=0).to_numpy()
    )
    prep.prepare(data, tmp_path / "b", n_images=7, seed=99, split_file=spec)  # n_images ignored
    pd.testing.assert_frame_equal(read_split(tmp_path / "b"), first)


def test_split_file_train_test_only_gets_val_carved(data, tmp_path, labels):
    ids = sorted(labels)
    rows = [(iid, "test" if i % 3 == 0 else "train") for i, iid in enumerate(ids)]  # 40/20
    spec = write_spec(tmp_path / "spec.csv", rows)
    prep.prepare(data, tmp_path / "a", split_file=spec, val_fraction=0.25, seed=1)
    got = assignment(tmp_path / "a")
    want = dict(rows)
    assert set(got) == set(want)
    assert {i for i, s in got.items() if s == "test"} == {i for i, s in want.items() if s == "test"}
    val = {i for i, s in got.items() if s == "val"}
    assert len(val) == round(0.25 * 40) == 10
    assert all(want[i] == "train" for i in val)
    # seeded: same seed same carve, another seed another carve
    prep.prepare(data, tmp_path / "b", split_file=spec, val_fraction=0.25, seed=1)
    prep.prepare(data, tmp_path / "c", split_file=spec, val_fraction=0.25, seed=2)
    assert assignment(tmp_path / "b") == got
    assert assignment(tmp_path / "c") != got


def test_split_file_with_val_is_used_as_is(data, tmp_path, labels):
    ids = sorted(labels)[:12]
    rows = [(iid, ["train", "train", "val", "test"][i % 4]) for i, iid in enumerate(ids)]
    spec = write_spec(tmp_path / "spec.csv", rows)
    prep.prepare(data, tmp_path / "a", split_file=spec, val_fraction=0.5)
    assert assignment(tmp_path / "a") == dict(rows)


def test_split_file_unknown_image(data, tmp_path, labels, caplog):
    rows = [(iid, "train") for iid in sorted(labels)[:10]] + [("ghost.jpg", "test")]
    spec = write_spec(tmp_path / "spec.csv", rows)
    with pytest.raises(FileNotFoundError, match=r"ghost\.jpg"):
        prep.prepare(data, tmp_path / "a", split_file=spec)
    assert_nothing_written(tmp_path / "a")
    with caplog.at_level(logging.WARNING):
        prep.prepare(data, tmp_path / "b", split_file=spec, skip_bad=True)
    assert "ghost.jpg" in caplog.text
    got = assignment(tmp_path / "b")
    assert "ghost.jpg" not in got and len(got) == 10


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (
            [("0000abc.jpg", "train"), ("0001abc.jpg", "validation")],
            r"line 3: split 'validation' is not one of",
        ),
        ([("0000abc.jpg", "train"), ("0000abc.jpg", "test")], r"'0000abc\.jpg' is listed twice"),
        ([("0000abc.jpg", "train"), ("../0001abc.jpg", "test")], r"line 3.*not a plain file name"),
    ],
    ids=["split-name", "duplicate", "path"],
)
def test_split_file_bad_rows(data, tmp_path, rows, match):
    spec = write_spec(tmp_path / "spec.csv", rows)
    with pytest.raises(ValueError, match=match):
        prep.prepare(data, tmp_path / "a", split_file=spec)
    assert_nothing_written(tmp_path / "a")


def test_split_file_missing_columns(data, tmp_path):
    spec = tmp_path / "spec.csv"
    spec.write_text("ImageId,fold\n0000abc.jpg,train\n")
    with pytest.raises(ValueError, match=r"expected ImageId,split"):
        prep.prepare(data, tmp_path / "a", split_file=spec)


# ----------------------------------------------------------------------------- bad data
def test_missing_image_named_in_train_csv(tmp_path, labels, out, caplog):
    labels = dict(labels)
    labels["ghost.jpg"] = {3: "1 5"}
    data = write_kaggle(tmp_path / "data", labels)
    (data / "train_images" / "ghost.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) missing.*ghost\.jpg"):
        prep.prepare(data, out, n_images=None)
    assert_nothing_written(out)
    with caplog.at_level(logging.WARNING):
        prep.prepare(data, out, n_images=None, skip_bad=True)
    assert "ghost.jpg" in caplog.text
    df = read_split(out)
    assert "ghost.jpg" not in set(df["ImageId"]) and len(df) == N


def test_missing_defect_free_image_of_2019_csv(tmp_path, labels, out):
    labels = dict(labels)
    labels["ghost.jpg"] = {}
    data = write_kaggle(tmp_path / "data", labels, "2019")
    (data / "train_images" / "ghost.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"ghost\.jpg"):
        prep.prepare(data, out, n_images=None)


def test_missing_train_images_folder(tmp_path, out):
    data = tmp_path / "data"
    write_train_csv(data / "train.csv", {"a.jpg": {1: "1 1"}})
    with pytest.raises(FileNotFoundError, match="train_images"):
        prep.prepare(data, out)


def test_empty_train_images_folder(tmp_path, out):
    data = tmp_path / "data"
    write_train_csv(data / "train.csv", {"a.jpg": {1: "1 1"}})
    (data / "train_images").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        prep.prepare(data, out)


def test_missing_train_csv(tmp_path, out):
    data = tmp_path / "data"
    write_image(data / "train_images" / "a.jpg")
    with pytest.raises(FileNotFoundError, match="train.csv"):
        prep.prepare(data, out)


def test_malformed_train_csv(tmp_path, labels, out):
    data = write_kaggle(tmp_path / "data", labels)
    with open(data / "train.csv", "a") as f:
        f.write("0001abc.jpg,2,1 2 3\n")
    with pytest.raises(ValueError, match=r"ImageId '0001abc\.jpg'.*odd number"):
        prep.prepare(data, out, n_images=None)
    assert_nothing_written(out)


GOOD = jpeg_bytes()
BAD_FILES = {
    # name: (bytes, what the error says about it)
    "garbage": (b"this is not a jpeg", r"unreadable"),
    "empty": (b"", r"unreadable"),
    "header-cut": (GOOD[:40], r"unreadable"),
    "narrow": (jpeg_bytes(128, (256, 800)), r"size 800x256, expected 1600x256"),
    "short": (jpeg_bytes(128, (128, 1600)), r"size 1600x128, expected 1600x256"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_image_file(fresh_data, out, labels, kind, caplog):
    content, why = BAD_FILES[kind]
    victim = single_class(labels, 1)[0]
    (fresh_data / "train_images" / victim).write_bytes(content)
    out.mkdir()  # an existing, empty output folder must stay empty
    with pytest.raises(
        ValueError, match=rf"1 selected image\(s\) cannot be used: {victim} .*{why}"
    ):
        prep.prepare(fresh_data, out, n_images=None)
    assert_nothing_written(out)
    with caplog.at_level(logging.WARNING):
        prep.prepare(fresh_data, out, n_images=None, skip_bad=True)
    assert victim in caplog.text
    df = read_split(out)
    assert victim not in set(df["ImageId"]) and len(df) == N - 1


def test_several_bad_images_listed_in_one_error(fresh_data, out, labels):
    victims = single_class(labels, 3)
    (fresh_data / "train_images" / victims[0]).write_bytes(b"junk")
    (fresh_data / "train_images" / victims[1]).write_bytes(jpeg_bytes(128, (256, 800)))
    (fresh_data / "train_images" / victims[2]).write_bytes(GOOD[:40])
    with pytest.raises(ValueError, match=r"3 selected image\(s\)") as exc:
        prep.prepare(fresh_data, out, n_images=None)
    for v in victims:
        assert v in str(exc.value)
    assert_nothing_written(out)


def test_unselected_bad_image_does_not_matter(fresh_data, out, labels):
    victim = single_class(labels, 1)[0]
    (fresh_data / "train_images" / victim).write_bytes(b"junk")
    spec = write_spec(
        out.parent / "spec.csv", [(iid, "train") for iid in labels if iid != victim][:10]
    )
    prep.prepare(fresh_data, out, split_file=spec)
    assert len(read_split(out)) == 10


def test_truncated_jpeg_is_rejected(fresh_data, out, labels):
    victim = single_class(labels, 1)[0]
    body = jpeg_bytes(77)
    (fresh_data / "train_images" / victim).write_bytes(body[: len(body) // 2])
    with pytest.raises(ValueError, match=victim):
        prep.prepare(fresh_data, out, n_images=None)
    assert_nothing_written(out)


def test_skip_bad_drops_image_with_space_in_name(fresh_data, out):
    (fresh_data / "train_images" / "bad one.jpg").write_bytes(b"junk")
    prep.prepare(fresh_data, out, n_images=None, skip_bad=True)
    assert "bad one.jpg" not in set(read_split(out)["ImageId"])


# ----------------------------------------------------------------------------- cache
def test_cache_arrays(data, out):
    prep.prepare(data, out, n_images=12, cache_size=(128, 800))
    df = read_split(out)
    cache = out / "cache_128x800"
    images = np.load(cache / "images.npy")
    masks = np.load(cache / "masks.npy")
    assert images.shape == masks.shape == (12, 128, 800)
    assert images.dtype == masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) <= {0, 1, 2, 3, 4}  # class ids
    assert masks.any()
    for i, row in enumerate(df.itertuples(index=False)):
        full = rle.class_mask([getattr(row, f"EncodedPixels_{c}") for c in (1, 2, 3, 4)])
        # nearest neighbour at exactly half size keeps the even rows and columns
        np.testing.assert_array_equal(masks[i], full[::2, ::2], err_msg=row.ImageId)
        assert (images[i] == grey_of(row.ImageId)).all(), row.ImageId  # split.csv order
    assert sorted(p.name for p in out.iterdir()) == ["cache_128x800", "prepare.json", "split.csv"]


def test_cache_odd_size_matches_resized_mask(data, out):
    import cv2

    prep.prepare(data, out, n_images=6, cache_size=(100, 333))
    df = read_split(out)
    masks = np.load(out / "cache_100x333" / "masks.npy", mmap_mode="r")
    assert masks.shape == (6, 100, 333)
    for i, s in enumerate(df["EncodedPixels"]):
        want = cv2.resize(rle.decode(s), (333, 100), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(masks[i] > 0, want)


def test_cache_full_size_is_exact(tmp_path, out):
    labels = {"a.jpg": {3: "250 10 5000 300"}, "b.jpg": {}, "c.jpg": {1: "1 409600"}}
    data = write_kaggle(tmp_path / "data", labels, greys={"a.jpg": 30, "b.jpg": 60, "c.jpg": 90})
    prep.prepare(data, out, n_images=None, split=(1, 0, 0), cache_size=SHAPE)
    df = read_split(out)
    masks = np.load(out / "cache_256x1600" / "masks.npy")
    images = np.load(out / "cache_256x1600" / "images.npy")
    for i, row in enumerate(df.itertuples(index=False)):
        (cls, only_class), *_ = labels[row.ImageId].items() or [(0, "")]
        want = rle.decode(only_class) * cls  # the class id where the defect is
        np.testing.assert_array_equal(masks[i], want, err_msg=row.ImageId)
        assert (images[i] == {"a.jpg": 30, "b.jpg": 60, "c.jpg": 90}[row.ImageId]).all()


def test_cache_failure_leaves_no_cache_folder(data, out, monkeypatch):
    def boom(path):
        raise ValueError(f"cannot read image {path}")

    monkeypatch.setattr("steelseg.cache.read_grey", boom)
    with pytest.raises(ValueError, match="cannot read image"):
        prep.prepare(data, out, n_images=6, cache_size=(64, 400))
    assert not [p for p in out.iterdir() if "cache" in p.name]


def test_cache_failure_leaves_no_split_csv(data, out, monkeypatch):
    def boom(path):
        raise ValueError(f"cannot read image {path}")

    monkeypatch.setattr("steelseg.cache.read_grey", boom)
    with pytest.raises(ValueError):
        prep.prepare(data, out, n_images=6, cache_size=(64, 400))
    assert_nothing_written(out)


def test_cache_follows_a_new_split(data, out):
    prep.prepare(data, out, n_images=12, seed=1, cache_size=(128, 800))
    prep.prepare(data, out, n_images=12, seed=2, cache_size=(128, 800))
    df = read_split(out)
    images = np.load(out / "cache_128x800" / "images.npy")
    assert images.shape[0] == len(df)
    assert [int(images[i, 0, 0]) for i in range(len(df))] == [grey_of(i) for i in df["ImageId"]]


def test_bad_cache_size_is_rejected_before_writing(data, out):
    with pytest.raises(ValueError):
        prep.prepare(data, out, n_images=6, cache_size=(0, 400))
    assert_nothing_written(out)


# ----------------------------------------------------------------------------- CLI
def run_main(argv) -> int:
    return exit_code(prepare_main, argv)


def test_cli_success(data, out, capsys):
    rc = run_main(["--data-dir", data, "--out", out, "--n-images", "all", "--seed", "3"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out / 'split.csv'}: train 48, val 6, test 6" in stdout
    assert len(read_split(out)) == N


def test_cli_matches_function(data, tmp_path):
    assert (
        run_main(
            [
                "--data-dir",
                data,
                "--out",
                tmp_path / "cli",
                "--n-images",
                "40",
                "--split",
                "30,5,5",
                "--seed",
                "9",
            ]
        )
        == 0
    )
    prep.prepare(data, tmp_path / "fn", n_images=40, split=(30, 5, 5), seed=9)
    assert (tmp_path / "cli" / "split.csv").read_bytes() == (
        tmp_path / "fn" / "split.csv"
    ).read_bytes()


def test_cli_only_defective_and_cache(data, out, capsys):
    rc = run_main(
        [
            "--data-dir",
            data,
            "--out",
            out,
            "--n-images",
            "20",
            "--only-defective",
            "--split",
            "0.8,0,0.2",
            "--val-fraction",
            "0.25",
            "--cache",
            "64x400",
        ]
    )
    assert rc == 0
    df = read_split(out)
    assert len(df) == 20 and (df["n_classes"] != "0").all()
    assert Counter(df["split"]) == {"train": 12, "val": 4, "test": 4}
    assert np.load(out / "cache_64x400" / "masks.npy").shape == (20, 64, 400)


def test_cli_split_file_and_skip_bad(data, out, labels, capsys):
    spec = write_spec(
        out.parent / "spec.csv",
        [(iid, "train") for iid in sorted(labels)[:20]] + [("ghost.jpg", "test")],
    )
    rc = run_main(["--data-dir", data, "--out", out, "--split-file", spec, "--skip-bad"])
    assert rc == 0
    assert Counter(read_split(out)["split"]) == {"train": 18, "val": 2}


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--n-images", "61"], "asked for 61 images"),
        (["--n-images", "40", "--split", "30,5,4"], "counts summing to the 40"),
        (["--split", "0,1,0", "--n-images", "10"], "no training images"),
    ],
)
def test_cli_bad_request_exit_2(data, out, capsys, extra, match):
    rc = run_main(["--data-dir", data, "--out", out, *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("steelseg-prepare: error: ") and match in err
    assert_nothing_written(out)


def test_cli_bad_data_exit_2(tmp_path, labels, out, capsys):
    labels = dict(labels)
    labels["ghost.jpg"] = {1: "1 1"}
    data = write_kaggle(tmp_path / "data", labels)
    (data / "train_images" / "ghost.jpg").unlink()
    (data / "train_images" / "0030abc.jpg").write_bytes(b"junk")
    assert run_main(["--data-dir", data, "--out", out, "--n-images", "all"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("steelseg-prepare: error: ") and "ghost.jpg" in err
    assert_nothing_written(out)
    (data / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")  # drop ghost's row
    assert run_main(["--data-dir", data, "--out", out, "--n-images", "all"]) == 2
    err = capsys.readouterr().err
    assert "0030abc.jpg" in err and "unreadable" in err
    assert_nothing_written(out)


def test_cli_missing_data_dir_exit_2(tmp_path, capsys):
    assert run_main(["--data-dir", tmp_path / "nope", "--out", tmp_path / "out"]) == 2
    assert "steelseg-prepare: error: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--n-images", "0"],
        ["--n-images", "many"],
        ["--split", "1,2"],
        ["--cache", "256"],
        ["--cache", "axb"],
        ["--seed", "x"],
    ],
    ids=["n0", "n-word", "split2", "cache1", "cache-word", "seed"],
)
def test_cli_bad_arguments_exit_2(data, out, capsys, args):
    assert run_main(["--data-dir", data, "--out", out, *args]) == 2
    assert "steelseg-prepare: error:" in capsys.readouterr().err
    assert_nothing_written(out)


def test_cli_requires_data_dir_and_out(capsys):
    assert run_main([]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_cli_zero_cache_size_exit_2(data, out, capsys):
    assert run_main(["--data-dir", data, "--out", out, "--n-images", "6", "--cache", "0x400"]) == 2
    assert "steelseg-prepare: error:" in capsys.readouterr().err
    assert_nothing_written(out)
