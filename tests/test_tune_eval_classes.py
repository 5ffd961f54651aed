"""steelseg-tune and steelseg-eval on a 4-class model with the gate head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import eval_ckpt, tune_ckpt
from steelseg.labelled import labelled_split
from steelseg.postprocess import ClassPostProcess, load_tuned
from steelseg.tune import GATE_THRESHOLDS, Grid

SMALL = Grid(thresholds=(0.3, 0.5, 0.7), min_component_areas=(0, 100), min_total_areas=(0, 500))


@pytest.fixture(scope="module")
def tuned(tiny_ckpt_4gate: Path, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the 4-class gated checkpoint (its own sidecar), tuned on val."""
    ckpt = tmp_path_factory.mktemp("tuned4") / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(tiny_ckpt_4gate.read_bytes())
    run = tiny_ckpt_4gate.parent.parent
    (ckpt.parent.parent / "config.yaml").write_text((run / "config.yaml").read_text())
    return ckpt, tune_ckpt(ckpt, grid=SMALL, progress=False)


def test_tune_chooses_settings_per_class_and_a_gate(tuned) -> None:
    ckpt, result = tuned
    assert isinstance(result.postprocess, ClassPostProcess)
    assert result.postprocess.n_classes == 4
    assert result.score >= result.baseline - 1e-12  # the plain model is among the candidates
    classes = {r["class"] for r in result.rows}
    gates = {(r["gate"], r["gate_threshold"]) for r in result.rows}
    assert classes == {1, 2, 3, 4}
    assert ("soft", 0.5) in gates and {("hard", t) for t in GATE_THRESHOLDS} <= gates
    for c, chosen in enumerate(result.postprocess.classes, start=1):
        best = next(r for r in result.rows if r["class"] == c)  # rows are best first
        assert (chosen.threshold, chosen.gate) == (best["threshold"], best["gate"])
    stored, tta = load_tuned(ckpt)
    assert stored == result.postprocess and tta == ()
    info = json.loads(result.sidecar.read_text())
    assert info["metric"] == "kaggle_dice"


def test_eval_scores_the_tuned_settings_as_tune_did(tuned, tmp_path: Path) -> None:
    """The competition metric steelseg-eval gives the tuned model on val equals tune's score:
    the grid's arithmetic and the post-processing's masks agree, gate included."""
    ckpt, result = tuned
    ev = eval_ckpt(ckpt, split="val", out=tmp_path, progress=False, max_panels=2)
    post = ev["metrics"]["postprocessed"]
    assert post["kaggle_dice"] == pytest.approx(result.score, abs=1e-9)
    plain = ev["metrics"]["threshold_only"]
    assert plain["kaggle_dice"] == pytest.approx(result.baseline, abs=1e-9)
    # the competition metric is the mean of the classes' per-image Dice
    per_class = [c["dice_per_image"] for c in post["classes"]]
    assert post["kaggle_dice"] == pytest.approx(np.mean(per_class))
    assert [c["class"] for c in post["classes"]] == [1, 2, 3, 4]
    assert ev["classes"] == 4
    for key in ("small_recall", "small_n_true", "recall"):
        assert key in post["defect"]
    html = (tmp_path / "report.html").read_text()
    assert "Defect classes" in html and "competition metric" in html
    assert "predicted classes" in html and "true classes" in html


def test_eval_merged_numbers_match_the_class_masks(tiny_ckpt_4gate: Path, tmp_path: Path) -> None:
    """The binary numbers of a 4-class model score the merged mask (any class)."""
    ev = eval_ckpt(tiny_ckpt_4gate, split="val", out=tmp_path, progress=False, max_panels=0)
    ids, _, mask_of = labelled_split(tiny_ckpt_4gate, "val")
    for row in ev["images"]:
        assert row["gt_pixels"] == int(mask_of(row["image_id"]).sum())
        assert sum(row["gt_classes"]) == row["gt_pixels"]  # the classes never overlap
    assert len(ev["images"]) == len(ids)
    # the pixel confusion matrix of the class-id maps, background + 4 classes
    true_pixels = np.sum([row["gt_classes"] for row in ev["images"]], axis=0)
    n_pixels = len(ids) * 256 * 1600
    for variant in ev["metrics"].values():
        seg, pixel = variant["segmentation"], variant["pixel"]
        assert list(seg["classes"]) == ["background", "1", "2", "3", "4"]
        m = np.array(seg["confusion"])  # rows truth, columns prediction
        assert m.shape == (5, 5) and m.sum() == n_pixels
        assert m.sum(1)[1:].tolist() == true_pixels.tolist()
        assert [c["pixels"] for c in seg["classes"].values()] == m.sum(1).tolist()
        # the merged mask's counts: any class on any class, any class on background, missed
        assert (m[1:, 1:].sum(), m[0, 1:].sum(), m[1:, 0].sum()) == (
            pixel["tp"],
            pixel["fp"],
            pixel["fn"],
        )
        assert seg["aAcc"] == pytest.approx(np.trace(m) / n_pixels)
        ious = [np.nan if c["IoU"] is None else c["IoU"] for c in seg["classes"].values()]
        assert seg["mIoU"] == pytest.approx(np.nanmean(ious))
    html = (tmp_path / "report.html").read_text()
    assert "Segmentation metrics, background included" in html and "mIoU" in html


def test_a_four_class_model_on_binary_labels_is_refused(tiny_ckpt_4gate: Path, tmp_path: Path):
    split = tiny_ckpt_4gate.parents[2] / "prepared" / "split.csv"  # the fixture's prepared_dir
    rows = pd.read_csv(split, dtype=str, keep_default_na=False)
    binary = rows[[c for c in rows.columns if not c.startswith("EncodedPixels_")]]
    path = tmp_path / "binary_split.csv"
    binary.to_csv(path, index=False)
    with pytest.raises(ValueError, match="has 4 classes .* merged \\(binary\\) masks only") as e:
        eval_ckpt(tiny_ckpt_4gate, split="val", split_file=path, out=tmp_path / "e")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="merged \\(binary\\) masks only"):
        tune_ckpt(tiny_ckpt_4gate, split_file=path, grid=SMALL, save=False, progress=False)
    assert not (tmp_path / "e").exists()


def test_pseudo_labels_of_a_four_class_model_keep_their_classes(
    tiny_ckpt_4gate: Path, synth_root: Path, tmp_path: Path
) -> None:
    from steelseg import rle
    from steelseg.predict import Predictor
    from steelseg.pseudo import pseudo_label

    predictor = Predictor.from_checkpoint(tiny_ckpt_4gate, "cpu")
    out = tmp_path / "pseudo"
    summary = pseudo_label(predictor, [synth_root / "test_images"], out, max_uncertain=1.0)
    ann = rle.read_annotations(out / "train.csv")  # Kaggle's rule: ClassId 1..4 only
    assert set(ann["ClassId"]) <= {1, 2, 3, 4}
    assert summary["kept"] == len(list((out / "train_images").iterdir()))


def test_a_binary_model_with_the_gate_tunes_and_evaluates(
    synth_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """classes=1 with the head: one image probability per image gates the merged mask."""
    from omegaconf import open_dict

    from conftest import tiny_overrides
    from steelseg import config
    from steelseg.train import train

    out = tmp_path_factory.mktemp("binary_gate")
    cfg = config.compose(tiny_overrides(synth_root, "test=false", "model.gate=true"), out / "run")
    with open_dict(cfg):
        cfg.data.prepared_dir = str(out / "prepared")
    train(cfg)
    ckpt = out / "run" / "checkpoints" / "last.ckpt"
    result = tune_ckpt(ckpt, grid=SMALL, progress=False)
    assert {r["gate"] for r in result.rows} == {"none", "soft", "hard"}
    ev = eval_ckpt(ckpt, split="val", out=out / "eval", progress=False, max_panels=0)
    assert ev["metrics"]["postprocessed"]["pixel"]["dice_per_image"] == pytest.approx(
        result.score, abs=1e-9
    )
