"""steelseg.realism: synthetic strips against real ones, each comparison one distance.

The "real" strips are made here from a tiny synthetic set: the same images (every distance 0),
a copy with part of each image blackened (the dark-share and histogram distances rise) and a
blurred copy (the texture distances rise).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from helpers import exit_code, write_train_csv
from steelseg import realism, synth
from steelseg.cli.synth import main as synth_main
from steelseg.rle import read_annotations

DISTANCES = [
    "grey_histogram",
    "dark_share",
    "spectrum_along",
    "spectrum_across",
    *(f"defect_area_class_{c}" for c in range(1, 5)),
]


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("realism") / "synth", 6, n_test=1, progress=False)


def strips(synth_root: Path, folder: Path, change=lambda img: img) -> Path:
    """``folder`` with each synthetic train image, changed by ``change``, as a lossless PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((synth_root / "train_images").iterdir()):
        img = change(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
        cv2.imwrite(str(folder / f"{path.stem}.png"), img)
    return folder


def blacken(img: np.ndarray) -> np.ndarray:
    img = img.copy()
    img[:, : img.shape[1] * 2 // 5] = 5  # 40% of the frame: the black beside a strip end
    return img


def values(result: dict) -> dict[str, float | None]:
    return {name: entry["value"] for name, entry in result["distances"].items()}


def test_identical_sets_are_at_distance_zero(synth_set, tmp_path):
    result = realism.compare(
        synth_set, synth_set / "train_images", real_labels=synth_set / "train.csv"
    )
    assert list(result["distances"]) == DISTANCES
    for name, value in values(result).items():
        if value is None:  # a class the tiny set lacks, on both sides
            assert result["distances"][name]["real"]["images"] == 0, name
        else:
            assert value == pytest.approx(0, abs=1e-9), name
    assert values(result)["defect_area_class_3"] is not None  # the tiny set has scratches
    assert result["synthetic"]["images"] == result["real"]["images"] == 6
    assert result["labels"]["real"]["clean_share"] == result["labels"]["synthetic"]["clean_share"]


def test_blackening_raises_the_dark_and_histogram_distances(synth_set, tmp_path):
    same = realism.compare(synth_set, strips(synth_set, tmp_path / "same"))
    dark = realism.compare(synth_set, strips(synth_set, tmp_path / "dark", blacken))
    assert same["distances"]["dark_share"]["value"] == pytest.approx(0, abs=1e-9)
    assert dark["distances"]["dark_share"]["value"] > 0.3  # 40% of each frame, less any margin
    assert dark["distances"]["dark_share"]["real"]["images_with_dark"] == 1.0
    assert same["distances"]["grey_histogram"]["value"] < 0.5  # PNG of the same pixels
    assert dark["distances"]["grey_histogram"]["value"] > 20  # ~40% of pixels moved by ~100
    # the spectra use only steel away from the dark area: the rest of each frame is unchanged
    assert dark["distances"]["spectrum_across"]["value"] < 0.1


def test_blurring_raises_the_texture_distances(synth_set, tmp_path):
    blurred = strips(synth_set, tmp_path / "blur", lambda img: cv2.GaussianBlur(img, (0, 0), 2))
    result = values(realism.compare(synth_set, blurred))
    assert result["spectrum_along"] > 0.5 and result["spectrum_across"] > 0.5  # decades
    assert result["dark_share"] < 0.01


def test_colour_strips_of_another_size(synth_set, tmp_path):
    """Any size, grey stored as 3 channels: read grey; too short for a 256-px segment down the
    columns, the texture along is not measured and says why."""
    folder = strips(synth_set, tmp_path / "small", lambda img: cv2.merge([img[:200, :900]] * 3))
    result = realism.compare(synth_set, folder)
    assert result["distances"]["dark_share"]["value"] is not None
    assert result["distances"]["spectrum_across"]["value"] < 0.3
    along = result["distances"]["spectrum_along"]
    assert along["value"] is None and along["note"].startswith("not measured")


def test_areas_read_both_kaggle_layouts_and_the_index(synth_set, tmp_path):
    names = sorted(p.name for p in (synth_set / "train_images").iterdir())
    current = realism.read_areas(synth_set / "train.csv", names)
    assert current.attrs["clean_listed"] and list(current.columns) == [1, 2, 3, 4]
    assert sorted(current.index) == names
    ann = read_annotations(synth_set / "train.csv")
    labels = {i: {} for i in names}
    for iid, c, enc in ann[["ImageId", "ClassId", "EncodedPixels"]].itertuples(index=False):
        labels[iid][c] = enc
    old = realism.read_areas(write_train_csv(tmp_path / "2019.csv", labels, "2019"))
    index = tmp_path / "index.csv"
    pd.DataFrame(
        {"image_id": current.index, **{f"area_class_{c}": current[c] for c in range(1, 5)}}
    ).to_csv(index, index=False)
    for areas in (old, realism.read_areas(index)):
        pd.testing.assert_frame_equal(areas.sort_index(), current.sort_index(), check_names=False)
        assert areas.attrs["clean_listed"]
    assert current.to_numpy().sum() > 0  # the tiny set has defects to compare
    # the current layout lists defective images only: alone, it cannot say which are clean
    alone = realism.read_areas(synth_set / "train.csv", ["other.jpg"])
    assert not alone.attrs["clean_listed"] and len(alone) == len(set(ann["ImageId"]))
    result = realism.compare(synth_set, synth_set / "train_images", real_labels=index)
    assert result["distances"]["defect_area_class_3"]["value"] == pytest.approx(0, abs=1e-9)


def test_report_has_every_comparison_and_before_after(synth_set, tmp_path):
    real = strips(synth_set, tmp_path / "dark", blacken)
    first = realism.compare(synth_set, real, tmp_path / "before")
    # without labels the areas are said to be unmeasured, not dropped
    assert list(first["distances"]) == DISTANCES
    for c in range(1, 5):
        entry = first["distances"][f"defect_area_class_{c}"]
        assert entry["value"] is None and entry["note"] == "not measured: no real labels given"
    on_disk = json.loads((tmp_path / "before" / "realism.json").read_text())
    assert on_disk["distances"].keys() == first["distances"].keys()
    for entry in on_disk["distances"].values():
        assert {"label", "value", "unit", "meaning"} <= entry.keys() and entry["meaning"]
    assert len(on_disk["distances"]["grey_histogram"]["real"]["histogram"]) == 256

    second = realism.compare(
        synth_set,
        synth_set / "train_images",
        tmp_path / "after",
        real_labels=synth_set / "train.csv",
        baseline=tmp_path / "before" / "realism.json",
    )
    dark = second["distances"]["dark_share"]
    assert dark["before"] == first["distances"]["dark_share"]["value"]
    assert dark["change"] == pytest.approx(dark["value"] - dark["before"]) and dark["change"] < 0
    assert second["distances"]["defect_area_class_3"]["change"] is None  # not measured before
    page = (tmp_path / "after" / "realism.html").read_text()
    for entry in second["distances"].values():
        assert entry["label"] in page
    assert "<th>before</th>" in page
    assert page.count("<img") == 4 + 2 * realism.N_THUMBS  # 4 plots, the strips side by side
    table = realism.format_table(second)
    assert "before" in table and all(e["label"] in table for e in second["distances"].values())


@pytest.mark.parametrize(
    "case, error",
    [
        ("missing folder", FileNotFoundError),
        ("no images", ValueError),
        ("bad labels", ValueError),
        ("not a synthetic set", FileNotFoundError),
        ("bad baseline", ValueError),
    ],
)
def test_bad_input_is_refused_and_nothing_written(synth_set, tmp_path, case, error):
    real, labels, root, baseline = synth_set / "train_images", None, synth_set, None
    if case == "missing folder":
        real = tmp_path / "nowhere"
    elif case == "no images":
        real = tmp_path / "empty"
        real.mkdir()
        (real / "notes.txt").write_text("no strips here")
    elif case == "bad labels":
        labels = tmp_path / "labels.csv"
        labels.write_text("name,area\na.jpg,3\n")
    elif case == "not a synthetic set":
        root = tmp_path
    else:
        baseline = tmp_path / "old.json"
        baseline.write_text('{"something": 1}')
    with pytest.raises(error):
        realism.compare(root, real, tmp_path / "out", labels, baseline=baseline)
    assert not (tmp_path / "out").exists()


def test_command(tmp_path, capsys):
    out, real = tmp_path / "synth", tmp_path / "real"
    labels = write_train_csv(tmp_path / "train.csv", {"a.jpg": {3: "1 500"}, "b.jpg": {}}, "2019")
    assert exit_code(synth_main, ["--out", out, "--n-images", 3, "--n-test", 1, "--quiet"]) == 0
    strips(out, real, blacken)
    argv = ["--out", out, "--n-images", 3, "--n-test", 1, "--quiet", "--compare-to", real]
    assert exit_code(synth_main, [*argv, "--real-labels", labels]) == 0
    printed = capsys.readouterr().out
    assert "grey-level histogram" in printed and "defect area, class 3" in printed
    assert (out / "realism" / "realism.html").is_file()
    saved = json.loads((out / "realism" / "realism.json").read_text())
    assert saved["distances"]["dark_share"]["value"] > 0.3

    # --compare-to alone on a set already there compares it as it is (3 images, not the
    # default 400 made over it); asking for other sizes makes them
    marker = (out / "synth.json").read_bytes()
    assert exit_code(synth_main, ["--out", out, "--quiet", "--compare-to", real]) == 0
    assert (out / "synth.json").read_bytes() == marker
    assert len(list((out / "train_images").iterdir())) == 3
    assert (
        exit_code(synth_main, ["--out", out, "--n-images", 4, "--quiet", "--compare-to", real]) == 0
    )
    assert len(list((out / "train_images").iterdir())) == 4
    capsys.readouterr()

    # a bad input: one error line, nothing made (not even the synthetic set)
    fresh = tmp_path / "fresh"
    bad = ["--out", fresh, "--quiet", "--compare-to", tmp_path / "nowhere"]
    assert exit_code(synth_main, bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steelseg-synth: error: ") and "nowhere" in err and "\n" not in err
    assert not fresh.exists()
    assert exit_code(synth_main, ["--out", fresh, "--real-labels", labels]) == 2
    assert "--real-labels needs --compare-to" in capsys.readouterr().err


def test_needs_no_torch():
    code = "import sys, steelseg.realism; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
