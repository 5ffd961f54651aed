"""steelseg.pseudo: confident predictions on unlabelled images become extra training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from conftest import tiny_overrides
from helpers import exit_code
from steelseg import config, rle
from steelseg.cli.pseudo import main
from steelseg.dataset import SteelDataModule
from steelseg.predict import Predictor, read_grey
from steelseg.pseudo import pseudo_label, uncertain_fraction


@pytest.fixture(scope="module")
def predictor(tiny_ckpt: Path) -> Predictor:
    return Predictor.from_checkpoint(tiny_ckpt, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def probs(predictor: Predictor, synth_root: Path) -> dict[str, np.ndarray]:
    """Probabilities of the test images, batched as pseudo_label batches them."""
    paths = sorted((synth_root / "test_images").iterdir())
    return dict(
        zip((p.name for p in paths), predictor.predict_proba([read_grey(p) for p in paths]))
    )


@pytest.fixture(scope="module")
def fractions(probs: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: uncertain_fraction(prob, 0.2, 0.8) for name, prob in probs.items()}


def test_rle_reads_class_0_only_when_asked(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("ImageId,ClassId,EncodedPixels\na.jpg,0,1 3\nb.jpg,2,5 2\n")
    with pytest.raises(ValueError, match=r"ClassId '0' is not one of 1\.\.4"):
        rle.read_annotations(csv)
    df = rle.read_annotations(csv, any_class=True)
    assert df["ClassId"].tolist() == [rle.ANY_CLASS, 2]
    csv.write_text("ImageId,ClassId,EncodedPixels\na.jpg,-1,1 3\n")
    with pytest.raises(ValueError, match=r"ClassId '-1' is not one of 0\.\.4"):
        rle.read_annotations(csv, any_class=True)


def test_uncertain_fraction():
    prob = np.array([[0.0, 0.2, 0.21, 0.5], [0.79, 0.8, 1.0, 0.9]], dtype=np.float32)
    assert uncertain_fraction(prob, 0.2, 0.8) == pytest.approx(3 / 8)
    assert uncertain_fraction(prob, 0.1, 0.95) == pytest.approx(6 / 8)


def test_keeps_confident_images_only(predictor, synth_root, probs, fractions, tmp_path):
    values = sorted(fractions.values())
    assert values[0] < values[-1]  # the images differ, so a cut-off can split them
    cut = (values[0] + values[-1]) / 2
    expect = sorted(k for k, v in fractions.items() if v <= cut)
    out = tmp_path / "pseudo"
    summary = pseudo_label(
        predictor, [synth_root / "test_images"], out, max_uncertain=cut, progress=False
    )
    assert summary["images"] == 3 and summary["kept"] == len(expect) and summary["skipped"] == {}
    kept = sorted(p.name for p in (out / "train_images").iterdir())
    assert kept == expect
    for name in kept:  # links to the originals
        assert (out / "train_images" / name).resolve() == (synth_root / "test_images" / name)
    ann = rle.read_annotations(out / "train.csv", any_class=True)
    assert set(ann["ClassId"]) <= {rle.ANY_CLASS} and set(ann["ImageId"]) <= set(kept)
    for name in kept:  # the labels are the predictor's masks
        mask = predictor.postprocess.apply(probs[name])
        np.testing.assert_array_equal(rle.image_mask(ann, name), mask)
    scores = pd.read_csv(out / "scores.csv")
    assert sorted(scores["ImageId"]) == sorted(fractions)
    for iid, frac, keep in zip(scores["ImageId"], scores["uncertain_fraction"], scores["kept"]):
        assert frac == pytest.approx(fractions[iid]) and bool(keep) == (iid in expect)
    assert json.loads((out / "pseudo.json").read_text())["class_id"] == 0


def test_rerun_replaces_the_set_and_refuses_foreign_folders(predictor, synth_root, tmp_path):
    out = tmp_path / "pseudo"
    pseudo_label(predictor, [synth_root / "test_images"], out, max_uncertain=1.0, progress=False)
    assert len(list((out / "train_images").iterdir())) == 3
    pseudo_label(predictor, [synth_root / "test_images"], out, max_uncertain=0.0, progress=False)
    kept = json.loads((out / "pseudo.json").read_text())["kept"]
    assert len(list((out / "train_images").iterdir())) == kept  # no stale images left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        pseudo_label(predictor, [synth_root / "test_images"], foreign, progress=False)
    with pytest.raises(ValueError, match="low < high"):
        pseudo_label(predictor, [synth_root / "test_images"], tmp_path / "x", low=0.8, high=0.2)


def test_cli_copies_and_reports_skips(tiny_ckpt, synth_root, tmp_path, capsys):
    junk = tmp_path / "junk.png"
    junk.write_text("junk")
    out = tmp_path / "pseudo"
    argv = [str(tiny_ckpt), str(synth_root / "test_images"), str(junk), "--out", str(out)]
    assert exit_code(main, [*argv, "--max-uncertain", "1", "--copy"]) == 3
    assert "junk.png: not an image" in capsys.readouterr().err
    files = list((out / "train_images").iterdir())
    assert len(files) == 3 and not any(p.is_symlink() for p in files)
    assert exit_code(main, [*argv, "--low", "0.9"]) == 2
    assert capsys.readouterr().err.startswith("steelseg-pseudo: error: need 0 <= low < high")


def test_training_adds_pseudo_labels_to_train_only(predictor, synth_root, tmp_path):
    extra = tmp_path / "pseudo"
    pseudo_label(predictor, [synth_root / "test_images"], extra, max_uncertain=1.0, progress=False)
    cfg = config.compose(
        tiny_overrides(synth_root, "test=false", f"++data.extra_roots=[{extra}]"),
        output_dir=tmp_path / "run",
    )
    with open_dict(cfg):
        cfg.data.prepared_dir = str(tmp_path / "prepared")
    kw = {k: v for k, v in cfg.data.items() if k != "_target_"}
    plain = SteelDataModule(**{**kw, "extra_roots": None})
    plain.prepare_data()
    plain.setup()
    with_extra = SteelDataModule(**kw)
    with_extra.setup()
    sizes = {k: len(v) for k, v in with_extra.datasets.items()}
    assert sizes["train"] == len(plain.datasets["train"]) + 3
    assert sizes["val"] == len(plain.datasets["val"]) and sizes["test"] == len(
        plain.datasets["test"]
    )
    added = with_extra.datasets["train"].datasets[1]
    ann = rle.read_annotations(extra / "train.csv", any_class=True)
    assert sorted(added.ids) == sorted(p.name for p in (extra / "train_images").iterdir())
    encoded = [r["EncodedPixels"] for r in added.records]
    for iid, e in zip(added.ids, encoded):  # the extra images carry their pseudo masks
        assert e == rle.merge(ann.loc[ann["ImageId"] == iid, "EncodedPixels"])
    first = next(i for i, e in enumerate(encoded) if e)
    item = added[first]
    assert item["image"].shape == (1, 64, 320) and item["mask"].sum() > 0

    from steelseg.train import train

    metrics = train(cfg)
    assert metrics["epochs"] == 1.0 and np.isfinite(metrics["val/loss"])
