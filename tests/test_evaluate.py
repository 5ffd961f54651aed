"""steelseg.evaluate: the labelled split of a run, the scoring, and steelseg-eval end to end.

The end-to-end runs use the shared tiny checkpoint on its 3 validation images at full
resolution and always write into ``tmp_path`` (``--out``), never beside the checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import exit_code, standard_labels, write_kaggle
from steelseg import rle
from steelseg.cli.common import parse_tta
from steelseg.cli.eval import main
from steelseg.evaluate import Scorer
from steelseg.io import json_ready
from steelseg.labelled import labelled_split
from steelseg.metric import confusion_matrix, counts_at_thresholds, threshold_sweep
from steelseg.postprocess import PostProcess


def split_csv_of(ckpt: Path) -> pd.DataFrame:
    """The run's prepared split.csv (the tiny run sets data.prepared_dir explicitly)."""
    csv = Path(ckpt).parent.parent.parent / "prepared" / "split.csv"
    return pd.read_csv(csv, dtype=str, keep_default_na=False)


# ----------------------------------------------------------------------------- labelled_split
def test_labelled_split_reads_the_runs_split(tiny_ckpt: Path, synth_root: Path) -> None:
    rows = split_csv_of(tiny_ckpt)
    ids, paths, mask_of = labelled_split(tiny_ckpt, "val")
    expected = rows.loc[rows["split"] == "val", "ImageId"].tolist()
    assert ids == expected and len(ids) > 0
    assert paths == [synth_root / "train_images" / i for i in ids]
    enc = dict(zip(rows["ImageId"], rows["EncodedPixels"]))
    for i in ids:
        m = mask_of(i)
        assert m.shape == (256, 1600) and m.dtype == bool
        assert np.array_equal(m, rle.decode(enc[i]) > 0)
    # the run folder works as well as the checkpoint; "all" is every row
    assert labelled_split(tiny_ckpt.parent.parent, "val")[0] == ids
    assert labelled_split(tiny_ckpt, "all")[0] == rows["ImageId"].tolist()


def test_labelled_split_overrides(tiny_ckpt: Path, synth_root: Path, tmp_path: Path) -> None:
    rows = split_csv_of(tiny_ckpt).head(2).assign(split="test")
    custom = tmp_path / "split.csv"
    rows.to_csv(custom, index=False)
    ids, paths, _ = labelled_split(tiny_ckpt, "test", data_root=synth_root, split_file=custom)
    assert ids == rows["ImageId"].tolist()
    # a checkpoint outside any run folder needs both
    lone = tmp_path / "lone" / "model.ckpt"
    lone.parent.mkdir()
    shutil.copy(tiny_ckpt, lone)
    with pytest.raises(FileNotFoundError, match="--data-root"):
        labelled_split(lone, "test")
    assert labelled_split(lone, "test", data_root=synth_root, split_file=custom)[0] == ids


def test_a_run_trained_elsewhere_finds_its_relative_data(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's data.root relative to where steelseg-train ran (Hydra records that folder)
    is found from any other folder."""
    import os

    from omegaconf import OmegaConf

    started, elsewhere = tmp_path / "repo", tmp_path / "else" / "where" / "deep"
    elsewhere.mkdir(parents=True)
    run = started / "outputs" / "run"
    shutil.copytree(tiny_ckpt.parent.parent, run)
    cfg = OmegaConf.load(run / "config.yaml")
    for key in ("root", "prepared_dir"):
        cfg.data[key] = os.path.relpath(cfg.data[key], started)
    OmegaConf.save(cfg, run / "config.yaml")
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(started)}}}, run / ".hydra" / "hydra.yaml")
    expected = labelled_split(tiny_ckpt, "val")[0]
    monkeypatch.chdir(elsewhere)
    assert labelled_split(run / "checkpoints" / tiny_ckpt.name, "val")[0] == expected
    (run / ".hydra" / "hydra.yaml").unlink()  # no record of where it ran: the current folder
    with pytest.raises(FileNotFoundError, match=r"does not exist \(from the current folder"):
        labelled_split(run / "checkpoints" / tiny_ckpt.name, "val")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": "validation"}, ValueError, "unknown split 'validation'"),
        ({"data_root": "/nonexistent/data"}, FileNotFoundError, "/nonexistent/data does not exist"),
        ({"split_file": "/nonexistent/split.csv"}, FileNotFoundError, "split.csv"),
    ],
)
def test_labelled_split_errors(tiny_ckpt: Path, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        labelled_split(tiny_ckpt, **kwargs)


def test_labelled_split_missing_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        labelled_split(tmp_path / "nothing.ckpt")


# ----------------------------------------------------------------------------- scoring
def random_case(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.random((n, 12, 20)).astype(np.float32)
    target = rng.random((n, 12, 20)) < 0.3
    target[1] = False  # a clean image
    probs[1] = 0.01  # ... predicted clean at every threshold: Kaggle rule counts 1
    return probs, target


def test_threshold_curve_matches_threshold_sweep() -> None:
    probs, target = random_case()
    scorer = Scorer({"threshold_only": PostProcess()}, thresholds=[0.1, 0.3, 0.5, 0.7, 0.9])
    for i, (p, t) in enumerate(zip(probs, target)):
        scorer.add(f"img{i}", p, t)
    expected = threshold_sweep(
        torch.from_numpy(probs)[:, None],
        torch.from_numpy(target)[:, None].float(),
        scorer.thresholds,
    )
    for got, want in zip(scorer.curve(), expected):
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-9), (want["threshold"], k)


def test_counts_at_thresholds_inclusive() -> None:
    prob = np.array([[0.2, 0.5, 0.5, 0.9]])
    target = np.array([[True, True, False, False]])
    tp, fp, fn = counts_at_thresholds(prob, target, [0.2, 0.5, 0.6])
    # >= 0.2: all 4 predicted (tp 2, fp 2); >= 0.5: 3 (tp 1, fp 2); >= 0.6: 1 (tp 0, fp 1)
    assert tp.tolist() == [2, 1, 0]
    assert fp.tolist() == [2, 2, 1]
    assert fn.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="increasing"):
        counts_at_thresholds(prob, target, [0.5, 0.2])


def test_scorer_hand_computed() -> None:
    # image a: a 2x2 defect found plus a 1-pixel false alarm; image b: clean, a 1-pixel alarm
    prob_a = np.zeros((6, 6), np.float32)
    prob_a[0:2, 0:2] = 0.9
    prob_a[5, 5] = 0.8
    target_a = np.zeros((6, 6), bool)
    target_a[0:2, 0:2] = True
    prob_b = np.zeros((6, 6), np.float32)
    prob_b[3, 3] = 0.7
    variants = {"threshold_only": PostProcess(), "postprocessed": PostProcess(min_component_area=2)}
    s = Scorer(variants, keep_masks=["postprocessed"])
    s.add("a", prob_a, target_a)
    s.add("b", prob_b, np.zeros((6, 6), bool))
    plain, post = s.summary("threshold_only"), s.summary("postprocessed")
    # threshold only: tp 4, fp 2, fn 0 -> IoU 4/6; per image Dice 8/9 and 0
    assert plain["pixel"]["iou"] == pytest.approx(4 / 6)
    assert plain["pixel"]["dice_per_image"] == pytest.approx((8 / 9 + 0) / 2)
    assert plain["image"]["confusion"] == {
        "empty_predicted_empty": 0,
        "empty_predicted_defect": 1,
        "defect_predicted_empty": 0,
        "defect_predicted_defect": 1,
    }
    assert plain["defect"]["n_pred"] == 3 and plain["defect"]["found"] == 1
    # components below 2 pixels removed: both alarms go, every image right
    assert post["pixel"]["iou"] == 1.0 and post["pixel"]["dice_per_image"] == 1.0
    assert post["image"]["specificity"] == 1.0 and post["image"]["precision"] == 1.0
    assert post["defect"]["precision"] == 1.0
    # max probability 0.9 (defective) > 0.7 (clean): perfect ranking
    assert post["image"]["roc_auc_max_prob"] == 1.0
    assert [r["postprocessed"]["dice"] for r in s.images] == [1.0, 1.0]
    assert rle.decode(s.masks["postprocessed"]["b"], (6, 6)).sum() == 0
    assert set(s.masks) == {"postprocessed"}
    # pixel confusion over 72 pixels: 4 defect pixels found; 2 false alarms, then none
    seg = plain["segmentation"]
    assert seg["confusion"] == [[66, 2], [0, 4]]
    assert list(seg["classes"]) == ["background", "defect"]
    assert seg["classes"]["defect"]["IoU"] == pytest.approx(4 / 6)  # = pixel IoU
    assert seg["classes"]["background"]["IoU"] == pytest.approx(66 / 68)
    assert seg["mIoU"] == pytest.approx((4 / 6 + 66 / 68) / 2)
    assert seg["aAcc"] == pytest.approx(70 / 72)
    assert post["segmentation"]["confusion"] == [[68, 0], [0, 4]]
    assert post["segmentation"]["mIoU"] == 1.0


def test_scorer_confusion_of_a_multi_class_model() -> None:
    # classes 1, 2 on 3x3: the predicted class-id map is the most probable predicted class
    truth = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 2]])
    ids = np.array([[0, 1, 1], [0, 1, 0], [2, 2, 0]])
    prob = np.stack([np.where(ids == c, 0.9, 0.1) for c in (1, 2)]).astype(np.float32)
    prob[1, 0, 1] = 0.6  # class 2 predicted too at (0, 1), but class 1 is more probable
    s = Scorer({"threshold_only": PostProcess()}, classes=2)
    s.add("a", prob, truth)
    s.add("b", prob, truth)
    seg = s.summary("threshold_only")["segmentation"]
    assert list(seg["classes"]) == ["background", "1", "2"]
    assert seg["confusion"] == (2 * confusion_matrix(ids, truth, 3)).tolist()
    assert seg["confusion"] == [[4, 2, 0], [2, 4, 0], [2, 0, 4]]
    assert seg["mIoU"] == pytest.approx((2 / 5 + 2 / 4 + 2 / 3) / 3)


def test_json_ready_makes_strict_json() -> None:
    out = json_ready({"a": float("nan"), "b": [np.float32(0.5), np.int64(3)], "c": Path("x")})
    assert json.loads(json.dumps(out, allow_nan=False)) == {"a": None, "b": [0.5, 3], "c": "x"}


# ----------------------------------------------------------------------------- CLI end to end
def test_eval_cli_end_to_end(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    rc = main(
        [str(tiny_ckpt), "--split", "val", "--out", str(out), "--no-progress", "--panels", "2",
         "--min-total-area", "409601"]  # more than a whole image: every prediction emptied
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "report.html"]  # no temp files
    result = json.loads((out / "eval.json").read_text())
    n_val = int((split_csv_of(tiny_ckpt)["split"] == "val").sum())
    assert result["n_images"] == n_val == len(result["images"])
    assert set(result) >= {"checkpoint", "split", "metrics", "threshold_curve", "images", "tta"}
    assert set(result["metrics"]) == {"threshold_only", "postprocessed"}
    plain, post = result["metrics"]["threshold_only"], result["metrics"]["postprocessed"]
    for variant in (plain, post):
        assert set(variant) == {"postprocess", "pixel", "segmentation", "image", "defect"}
        seg, pixel = variant["segmentation"], variant["pixel"]
        assert {"aAcc", "mIoU", "mDice", "mAcc", "classes", "confusion"} <= set(seg)
        assert list(seg["classes"]) == ["background", "defect"]
        for c in seg["classes"].values():
            assert {"IoU", "Dice", "Precision", "Recall"} <= set(c)
        (tn, fp), (fn, tp) = seg["confusion"]  # rows truth, columns prediction
        assert (tp, fp, fn) == (pixel["tp"], pixel["fp"], pixel["fn"])
        assert tn + fp + fn + tp == n_val * 256 * 1600
        assert seg["classes"]["defect"]["IoU"] == pytest.approx(pixel["iou"])
        ious = [c["IoU"] for c in seg["classes"].values()]
        assert seg["mIoU"] == pytest.approx(np.nanmean([np.nan if v is None else v for v in ious]))
        assert {"iou", "dice", "dice_per_image"} <= set(variant["pixel"])
        assert {"precision", "recall", "f1", "roc_auc_max_prob", "roc_auc_area"} <= set(
            variant["image"]
        )
        assert {"recall", "precision", "found", "n_true"} <= set(variant["defect"])
    assert plain["postprocess"] == PostProcess(threshold=0.5).to_dict()
    assert post["postprocess"]["min_total_area"] == 409601
    # everything emptied: no image flagged, no pixel predicted; the plain threshold is untouched
    assert post["image"]["tp"] + post["image"]["fp"] == 0
    assert post["pixel"]["tp"] + post["pixel"]["fp"] == 0
    assert all(r["postprocessed"]["pred_pixels"] == 0 for r in result["images"])
    n_clean = sum(r["gt_pixels"] == 0 for r in result["images"])
    assert post["pixel"]["dice_per_image"] == pytest.approx(n_clean / n_val)
    assert [r["threshold"] for r in result["threshold_curve"]][:2] == [0.05, 0.1]
    html = (out / "report.html").read_text()
    assert html.count('class=panel id="img-') == min(2, n_val)
    assert "Segmentation metrics, background included" in html
    assert 'alt="pixel confusion matrix"' in html
    printed = capsys.readouterr().out
    assert "wrote" in printed
    assert "Segmentation: mIoU" in printed and "per class, post-processed" in printed
    assert "background" in printed and "defect" in printed


def test_eval_cli_threshold_only_equals_model_threshold(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main([str(tiny_ckpt), "--split", "val", "--out", str(out), "--no-progress",
                 "--panels", "0", "--no-tuned"]) == 0  # fmt: skip
    m = json.loads((out / "eval.json").read_text())["metrics"]
    # nothing but the model's threshold: both variants agree exactly
    assert m["threshold_only"] == m["postprocessed"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["{missing}"], "does not exist"),
        (["{ckpt}", "--split", "holdout"], "invalid choice: 'holdout'"),
        (["{ckpt}", "--data-root", "{missing}"], "does not exist"),
        (["{ckpt}", "--threshold", "1.5"], "threshold"),
        (["{ckpt}", "--tta", "rotate"], "unknown TTA 'rotate'"),
    ],
)
def test_eval_cli_bad_input_exits_non_zero(tiny_ckpt: Path, tmp_path: Path, capsys, args, match):
    fill = {"ckpt": str(tiny_ckpt), "missing": str(tmp_path / "missing")}
    argv = [a.format(**fill) for a in args] + ["--out", str(tmp_path / "o"), "--no-progress"]
    assert exit_code(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steelseg-eval: error:") and match in err
    assert len(err.splitlines()) == 1  # one clear line, no traceback
    assert not (tmp_path / "o").exists()


def test_eval_cli_skips_unreadable_images(tiny_ckpt: Path, synth_root: Path, tmp_path: Path):
    rows = split_csv_of(tiny_ckpt)
    good = rows.iloc[0]
    data = tmp_path / "data"
    (data / "train_images").mkdir(parents=True)
    shutil.copy(synth_root / "train_images" / good["ImageId"], data / "train_images")
    (data / "train_images" / "broken.jpg").write_text("not an image")
    split = pd.DataFrame(
        {
            "ImageId": [good["ImageId"], "broken.jpg"],
            "split": "test",
            "EncodedPixels": [good["EncodedPixels"], ""],
        }
    )
    split.to_csv(tmp_path / "split.csv", index=False)
    out = tmp_path / "eval"
    rc = main([str(tiny_ckpt), "--data-root", str(data), "--split-file", str(tmp_path / "split.csv"),
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 3  # finished, but says something was skipped
    result = json.loads((out / "eval.json").read_text())
    assert result["n_images"] == 1
    assert [s["image_id"] for s in result["skipped"]] == ["broken.jpg"]


def test_parse_tta() -> None:
    from steelseg.cli.eval import build_parser

    def tta(*extra: str):
        return build_parser().parse_args(["x.ckpt", *extra]).tta

    assert tta() is None  # absent: the tuned TTA, if any
    assert tta("--tta") == ("hflip", "vflip")  # the bare --tta flag
    assert tta("--tta", "vflip") == ("vflip",)
    assert tta("--tta", "none") == ()
    assert parse_tta("hflip,vflip") == ("hflip", "vflip")


def test_eval_cli_tta_flag(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    argv = [str(tiny_ckpt), "--split", "val", "--out", str(out), "--no-progress", "--panels", "0"]
    assert main([*argv, "--tta"]) == 0
    assert json.loads((out / "eval.json").read_text())["tta"] == ["hflip", "vflip"]


def test_eval_all_labelled_images_of_a_folder_needs_no_preparation(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    """``--split all`` on a Kaggle-layout folder nobody prepared: every labelled image."""
    labels = dict(list(standard_labels().items())[:5])
    data = write_kaggle(tmp_path / "plant", labels)
    assert not (data / "prepared").exists()
    out = tmp_path / "eval"
    argv = [tiny_ckpt, "--data-root", data, "--split", "all", "--out", out, "--no-progress"]
    assert exit_code(main, [*argv, "--panels", "0"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["n_images"] == len(list((data / "train_images").iterdir())) == 5
    assert result["n_defective"] == sum(1 for v in labels.values() if v)
    assert not (data / "prepared").exists()  # nothing was prepared on the way
    # a named split still needs a split file, and says how to get one
    assert exit_code(main, [*argv[:4], "--split", "val", "--out", out]) == 2


def test_eval_cli_names_each_class_by_its_data_name(capsys) -> None:
    """The per-class table says what classes.csv calls each class, not its id."""
    from steelseg.cli.eval import print_classes

    row = {"IoU": 0.5, "Dice": 0.6, "Precision": 0.7, "Recall": 0.8, "pixels": 10}
    seg = {"mIoU": 0.5, "classes": {"background": row, "1": row, "2": row}}
    print_classes(seg, {"1": "scratch", "2": "patch"})
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert names == ["background", "scratch", "patch"]
