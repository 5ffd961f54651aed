"""scripts/real_sample.py on a small stand-in for ../shared/severstal_sample (the real strips
stay outside the project): a folder of labelled images with ``sample_masks.csv`` and a folder
of unlabelled strips, made from synthetic data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "real_sample.py"


def test_real_sample_reports_each_labelled_image_with_its_classes(
    synth_root: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    labels = pd.read_csv(synth_root / "train.csv")
    ids = sorted(labels["ImageId"].unique())[:3]
    sample = tmp_path / "sample"
    (sample / "images").mkdir(parents=True)
    for image_id in ids:
        shutil.copy(synth_root / "train_images" / image_id, sample / "images")
    labels[labels["ImageId"].isin(ids)].to_csv(sample / "sample_masks.csv", index=False)
    shutil.copytree(synth_root / "test_images", sample / "test_images")
    n_strips = len(list((sample / "test_images").iterdir()))

    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_ckpt), "--sample", str(sample)]
        + ["--synthetic-classes", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split(" | ") for line in run.stdout.splitlines() if ".jpg |" in line]
    assert sorted(r[1] for r in rows) == ids  # every labelled image, once
    for _, image_id, classes, true_px, *_ in rows:
        mine = labels[labels["ImageId"] == image_id]
        assert classes == " ".join(map(str, sorted(mine["ClassId"])))
        assert int(true_px) > 0
    assert f"| {tiny_ckpt} | {n_strips} |" in run.stdout  # the unlabelled strips, counted
