"""Per-class models (``model.classes=4``) and the gate head (``model.gate=true``) through
inference, export and ``steelseg-predict``, down to a Kaggle submission."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from helpers import exit_code
from steelseg import rle, submission
from steelseg.cli.predict import main
from steelseg.export import export
from steelseg.model import SteelSegModule
from steelseg.postprocess import ClassPostProcess, PostProcess, class_map, save_tuned
from steelseg.predict import Predictor, read_grey
from steelseg.runtime import load_metadata, open_engine

C = 4


def tiny_module(gate: bool) -> SteelSegModule:
    """An untrained 4-class module of the tiny fixtures' shape (random, seeded)."""
    torch.manual_seed(0)
    return SteelSegModule(
        arch="fpn",
        encoder_name="tu-mobilenetv3_small_100",
        encoder_weights=None,
        in_channels=1,
        arch_kwargs={"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
        classes=C,
        gate=gate,
    )


def module_outputs(module: SteelSegModule, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid of the module's (mask (C, H, W), image (C,)) outputs for one image."""
    with torch.inference_mode():
        masks, labels = SteelSegModule.split_outputs(module(torch.from_numpy(image)[None, None]))
    return masks.sigmoid()[0].numpy(), labels.sigmoid()[0].numpy()


@pytest.fixture(scope="module")
def gated(tiny_ckpt_4gate: Path) -> Predictor:
    return Predictor.from_checkpoint(tiny_ckpt_4gate, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def images(synth_root: Path) -> list[np.ndarray]:
    return [read_grey(p) for p in sorted((synth_root / "test_images").iterdir())]


@pytest.fixture(scope="module")
def crop(images: list[np.ndarray]) -> np.ndarray:
    """A 64x320 window of a test image: small, and a multiple of 32 (no padding)."""
    return np.ascontiguousarray(images[0][96:160, 640:960])


# ----------------------------------------------------------------------------- API
def test_gated_model_probabilities_per_class_and_per_image(gated, images):
    assert (gated.classes, gated.gated, gated.input_size) == (C, True, None)
    assert gated.postprocess == ClassPostProcess.uniform(PostProcess(threshold=0.5), C)
    prob, image_prob = gated.predict_proba(images[0], return_image_prob=True)
    assert prob.shape == (C, *rle.SHAPE) and prob.dtype == np.float32
    assert image_prob.shape == (C,) and image_prob.dtype == np.float32
    want_prob, want_image = module_outputs(gated.module, images[0])  # 256x1600: no padding
    np.testing.assert_allclose(prob, want_prob, atol=1e-6)
    np.testing.assert_allclose(image_prob, want_image, atol=1e-6)
    probs, image_probs = gated.predict_proba(images, return_image_prob=True)  # batches 2 + 1
    assert probs.shape == (3, C, *rle.SHAPE) and image_probs.shape == (3, C)
    np.testing.assert_allclose(probs[0], prob, atol=1e-5)
    odd = np.ascontiguousarray(images[1][:100, :333])  # padded to 128x352 and cropped back
    out = gated.predict_proba([images[1], odd])
    assert [p.shape for p in out] == [(C, *rle.SHAPE), (C, 100, 333)]
    masks = gated.predict(images)
    assert masks.shape == (3, C, *rle.SHAPE) and masks.dtype == bool
    np.testing.assert_array_equal(masks, probs >= 0.5)


def test_ungated_model_has_no_image_probabilities(crop):
    p = Predictor(tiny_module(gate=False), device="cpu")
    assert (p.classes, p.gated) == (C, False)
    prob, image_prob = p.predict_proba(crop, return_image_prob=True)
    assert prob.shape == (C, 64, 320) and image_prob is None
    probs, image_probs = p.predict_proba([crop, crop], return_image_prob=True)
    assert probs.shape == (2, C, 64, 320) and image_probs is None
    with pytest.raises(ValueError, match="needs a model with the gate head"):
        Predictor(tiny_module(gate=False), device="cpu", postprocess=PostProcess(gate="soft"))
    with pytest.raises(ValueError, match="needs a model with the gate head"):
        p.predict(crop, postprocess=PostProcess(gate="hard"))
    with pytest.raises(ValueError, match="settings for 3 classes, but the model predicts 4"):
        p.predict(crop, postprocess=ClassPostProcess.uniform(PostProcess(), 3))


def test_hard_gate_empties_and_soft_gate_scales(gated, crop):
    prob, image_prob = gated.predict_proba(crop, return_image_prob=True)
    # a threshold that half the soft-gated pixels of each class pass (float32, as compared)
    thresholds = np.array([np.median(prob[c] * image_prob[c]) for c in range(C)], np.float32)
    thresholds = [float(t) for t in thresholds]
    plain = ClassPostProcess(tuple(PostProcess(threshold=t) for t in thresholds))
    # classes 1 and 3 gated out (their image probability is below their gate), 2 and 4 kept
    gates = [image_prob[c] + (0.01 if c % 2 == 0 else -0.01) for c in range(C)]
    hard = ClassPostProcess(
        tuple(
            PostProcess(threshold=t, gate="hard", gate_threshold=float(g))
            for t, g in zip(thresholds, gates)
        )
    )
    want = gated.predict(crop, postprocess=plain)
    got = gated.predict(crop, postprocess=hard)
    assert not got[0].any() and not got[2].any()
    np.testing.assert_array_equal(got[1::2], want[1::2])
    assert want[0].any() and want[2].any()  # emptied by the gate, not by the threshold

    soft = ClassPostProcess(tuple(PostProcess(threshold=t, gate="soft") for t in thresholds))
    got = gated.predict(crop, postprocess=soft)
    scaled = prob * image_prob[:, None, None]
    np.testing.assert_array_equal(got, scaled >= np.float32(thresholds)[:, None, None])
    assert (got.sum(axis=(1, 2)) < want.sum(axis=(1, 2))).all()  # scaled down: fewer pixels
    # a plain PostProcess acts on every class alike
    one = PostProcess(threshold=0.5, gate="hard", gate_threshold=0.99)
    assert not gated.predict(crop, postprocess=one).any()


def test_tta_flips_every_class_and_averages_the_image_probabilities(tiny_ckpt_4gate, gated, crop):
    tta = Predictor.from_checkpoint(tiny_ckpt_4gate, device="cpu", tta=["hflip", "vflip"])
    plain, plain_image = module_outputs(gated.module, crop)
    h, h_image = module_outputs(gated.module, np.ascontiguousarray(crop[:, ::-1]))
    v, v_image = module_outputs(gated.module, np.ascontiguousarray(crop[::-1]))
    prob, image_prob = tta.predict_proba(crop, return_image_prob=True)
    np.testing.assert_allclose(prob, (plain + h[:, :, ::-1] + v[:, ::-1]) / 3, atol=1e-5)
    np.testing.assert_allclose(image_prob, (plain_image + h_image + v_image) / 3, atol=1e-6)
    assert np.abs(prob - plain).max() > 1e-4  # the flips do change the answer


def test_predict_files_gives_image_probabilities_and_plain_ones(tiny_ckpt_4gate, synth_root):
    tta = Predictor.from_checkpoint(tiny_ckpt_4gate, device="cpu", tta=["hflip"])
    files = sorted((synth_root / "test_images").iterdir())[:2]
    preds = list(tta.predict_files(files, with_plain=True))
    assert len(preds) == 2
    for p in preds:
        assert p.prob.shape == p.plain.shape == (C, *rle.SHAPE)
        assert p.image_prob.shape == p.plain_image_prob.shape == (C,)
        pp = tta.postprocess
        np.testing.assert_array_equal(p.mask(pp), p.prob >= 0.5)
        np.testing.assert_array_equal(p.defect_mask(pp), (p.prob >= 0.5).any(axis=0))


def test_class_map_takes_the_most_probable_predicted_class():
    masks = np.zeros((C, 2, 3), bool)
    prob = np.zeros((C, 2, 3), np.float32)
    masks[0, 0, :2] = masks[2, 0, 1:] = True  # classes 1 and 3 overlap at (0, 1)
    prob[0, 0, 1], prob[2, 0, 1] = 0.6, 0.9
    prob[3, 1, 0] = 0.99  # probable, but not predicted (post-processed away)
    got = class_map(masks, prob)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, [[1, 3, 3], [0, 0, 0]])


# ----------------------------------------------------------------------------- export
def test_onnx_export_of_a_gated_4_class_model(tiny_ckpt_4gate, gated, images, tmp_path):
    run = tiny_ckpt_4gate.parent.parent  # never write beside the shared checkpoint: a copy
    ckpt = tmp_path / "run" / "checkpoints" / "m.ckpt"  # in a copy of its run, whose test
    ckpt.parent.mkdir(parents=True)  # split the export's accuracy check scores
    shutil.copyfile(run / "config.yaml", tmp_path / "run" / "config.yaml")
    shutil.copyfile(tiny_ckpt_4gate, ckpt)
    prob, image_prob = gated.predict_proba(images[0], return_image_prob=True)
    # tuned per class: a hard gate that keeps classes 2 and 4 (far from their probability)
    tuned = ClassPostProcess(
        tuple(
            PostProcess(threshold=0.5, gate="hard", gate_threshold=0.99 if c % 2 == 0 else 0.01)
            for c in range(C)
        )
    )
    save_tuned(ckpt, tuned, ["hflip"])
    out = tmp_path / "m.onnx"
    meta = export(ckpt, out, "onnx", onnx_exporter="torchscript")
    # checked on the test split: per-image Dice of the defects of any class, as PyTorch's
    accuracy = meta["accuracy"]
    assert accuracy["checked"] and accuracy["reference"]["n_images"] > 0
    runs = {(r["runtime"], r["precision"]): r for r in accuracy["runs"]}
    assert runs[("onnxruntime", "fp32")]["dice_drop"] == pytest.approx(0.0, abs=1e-3)
    assert (meta["classes"], meta["gated"], meta["input_size"]) == (C, True, None)
    assert meta["output"]["shape"] == ["N", C, "H", "W"]
    assert meta["image_output"] == {
        "name": "image_logits",
        "shape": ["N", C],
        "activation": "sigmoid",
    }
    assert meta["postprocess"] == tuned.to_dict() and meta["tta"] == ["hflip"]
    assert load_metadata(out)["postprocess"] == tuned.to_dict()

    engine = open_engine(out, "onnxruntime")
    assert (engine.classes, engine.gated) == (C, True)
    masks, labels = engine(np.zeros((2, 1, 64, 96), np.uint8))
    assert masks.shape == (2, C, 64, 96) and labels.shape == (2, C)

    onnx = Predictor.from_export(out, "onnxruntime")
    torch_ = Predictor.from_checkpoint(ckpt, device="cpu")
    assert (onnx.classes, onnx.gated, onnx.input_size) == (C, True, None)
    assert onnx.postprocess == torch_.postprocess == tuned and onnx.tta == ("hflip",)
    got_prob, got_image = onnx.predict_proba(images, return_image_prob=True)
    want_prob, want_image = torch_.predict_proba(images, return_image_prob=True)
    np.testing.assert_allclose(got_prob, want_prob, atol=1e-4)
    np.testing.assert_allclose(got_image, want_image, atol=1e-5)
    got, want = onnx.predict(images), torch_.predict(images)
    assert not got[:, 0::2].any() and not want[:, 0::2].any()  # gated out
    assert (got != want).mean() < 1e-4  # pixels within 1e-4 of the threshold may differ


# ----------------------------------------------------------------------------- CLI
def run_cli(*argv: str | Path) -> int:
    return exit_code(main, argv)  # argparse's usage errors included


@pytest.fixture
def kaggle_test(synth_root: Path, tmp_path: Path) -> Path:
    """A Kaggle test folder: test_images/ and sample_submission.csv (current layout)."""
    root = tmp_path / "kaggle"
    shutil.copytree(synth_root / "test_images", root / "test_images")
    shutil.copyfile(synth_root / "sample_submission.csv", root / "sample_submission.csv")
    return root


def test_cli_writes_a_valid_kaggle_submission(tiny_ckpt_4gate, kaggle_test, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(tiny_ckpt_4gate, kaggle_test, "--out", out, "--runtime", "torch") == 0
    sample = submission.read_sample(kaggle_test / "sample_submission.csv")
    n = len(sample.image_ids)
    assert submission.check(out / "submission.csv", sample)["images"] == n
    stdout = capsys.readouterr().out
    assert f"submission.csv is a valid Kaggle submission: {n} images" in stdout
    assert "current layout" in stdout
    summary = json.loads((out / "predict.json").read_text())
    assert (summary["classes"], summary["gated"]) == (C, True)
    assert summary["submission"]["left_empty"] == []
    assert not (out / "panels").exists()  # no ground truth

    # masks/ hold class ids; predictions.csv a row per (image, class) found, as submitted
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert list(rows.columns) == ["ImageId", "ClassId", "EncodedPixels", "ClassName"]
    sub = pd.read_csv(out / "submission.csv", dtype=str, keep_default_na=False)
    for image_id in sample.image_ids:
        stem = Path(image_id).stem
        ids = cv2.imread(str(out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.uint8 and ids.shape == rle.SHAPE and ids.max() <= C
        assert cv2.imread(str(out / "overlays" / f"{stem}.png")).shape == (*rle.SHAPE, 3)
        mine = rows[rows["ImageId"] == image_id]
        found = dict(zip(mine["ClassId"].astype(int), mine["EncodedPixels"]))
        assert (ids > 0).any() and 0 not in found and all(found.values())  # untrained: noisy
        for c in range(1, C + 1):
            decoded = rle.decode(found.get(c, "")).astype(bool)
            assert not (ids == c)[~decoded].any()  # a pixel of class c is in its mask
            submitted = sub[(sub["ImageId"] == image_id) & (sub["ClassId"] == str(c))]
            assert submitted["EncodedPixels"].tolist() == [found.get(c, "")]

    # nothing found (a minimum area above the image's): a ClassId 0 row per image, empty
    # masks, an all-empty submission; the sample beside test_images/ is found when
    # test_images/ itself is the input too
    out = tmp_path / "none"
    assert run_cli(tiny_ckpt_4gate, kaggle_test / "test_images", "--out", out,
                   "--runtime", "torch", "--min-total-area", "409601") == 0  # fmt: skip
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert sorted(rows["ImageId"]) == sorted(sample.image_ids)
    assert set(rows["ClassId"]) == {"0"} and set(rows["EncodedPixels"]) == {""}
    for image_id in sample.image_ids:
        ids = cv2.imread(str(out / "masks" / f"{Path(image_id).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert not ids.any()
    assert submission.check(out / "submission.csv", sample)["non_empty"] == 0


def test_cli_with_ground_truth_draws_panels_and_writes_no_submission(
    tiny_ckpt_4gate, synth_root, tmp_path
):
    ann = rle.read_annotations(synth_root / "train.csv")
    ids = sorted(set(ann["ImageId"]))[:2]
    root = tmp_path / "labelled"
    (root / "train_images").mkdir(parents=True)
    for i in ids:
        shutil.copyfile(synth_root / "train_images" / i, root / "train_images" / i)
    ann[ann["ImageId"].isin(ids)].to_csv(root / "train.csv", index=False)
    out = tmp_path / "out"
    assert run_cli(tiny_ckpt_4gate, root, "--out", out, "--runtime", "torch") == 0
    assert sorted(p.name for p in (out / "panels").iterdir()) == sorted(
        Path(i).stem + ".png" for i in ids
    )
    assert not (out / "submission.csv").exists()
    assert json.loads((out / "predict.json").read_text())["submission"] is None


def test_cli_submission_needs_a_4_class_model(tiny_ckpt, kaggle_test, tmp_path, capsys):
    out = tmp_path / "out"
    sample = kaggle_test / "sample_submission.csv"
    args = ("--out", out, "--runtime", "torch")
    assert run_cli(tiny_ckpt, kaggle_test, *args, "--sample-submission", sample) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "steelseg-predict: error: a Kaggle submission needs 4 defect classes, but the model "
        "predicts 1; train with model.classes=4"
    ]
    assert not out.exists()
    # the sample found beside test_images/ is left out for a binary model, saying so
    assert run_cli(tiny_ckpt, kaggle_test, *args) == 0
    assert "no submission.csv for" in capsys.readouterr().err
    assert (out / "predictions.csv").is_file() and not (out / "submission.csv").exists()


def test_cli_bad_samples_are_one_line_before_anything(
    tiny_ckpt_4gate, kaggle_test, tmp_path, capsys
):
    sample = kaggle_test / "sample_submission.csv"
    lines = sample.read_text().splitlines()
    sample.write_text("\n".join([*lines, "absent.jpg,,1"]) + "\n")
    out = tmp_path / "out"
    assert run_cli(tiny_ckpt_4gate, kaggle_test, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names 1 image(s) not in test_images/: absent.jpg" in err[0]

    sample.write_bytes(b"\xff\xfe not text")
    assert run_cli(tiny_ckpt_4gate, kaggle_test, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sample_submission.csv is not a text CSV" in err[0]

    missing = tmp_path / "none.csv"
    test_images = kaggle_test / "test_images"
    assert run_cli(tiny_ckpt_4gate, test_images, "--out", out, "--sample-submission", missing) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"steelseg-predict: error: sample submission not found: {missing}"]
    assert not out.exists()


def test_cli_partial_sample_says_which_images_it_leaves_out(
    tiny_ckpt_4gate, kaggle_test, tmp_path, capsys
):
    sample = kaggle_test / "sample_submission.csv"
    header, first, *rest = sample.read_text().splitlines()
    sample.write_text("\n".join([header, first]) + "\n")  # names one of the test images
    out = tmp_path / "out"
    assert run_cli(tiny_ckpt_4gate, kaggle_test, "--out", out, "--runtime", "torch") == 0
    assert f"does not name {len(rest)} predicted image(s)" in capsys.readouterr().err
    checked = submission.check(out / "submission.csv", submission.read_sample(sample))
    assert checked["images"] == 1


def test_cli_gate_options(tiny_ckpt, tiny_ckpt_4gate, synth_root, tmp_path, capsys):
    image = sorted((synth_root / "test_images").iterdir())[0]
    out = tmp_path / "out"
    gate = ("--runtime", "torch", "--gate", "hard", "--gate-threshold", "0.99")
    assert run_cli(tiny_ckpt, image, "--out", out, *gate) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a model with the gate head" in err[0]
    assert not out.exists()
    assert run_cli(tiny_ckpt_4gate, image, "--out", out, *gate) == 0
    summary = json.loads((out / "predict.json").read_text())
    assert {(c["gate"], c["gate_threshold"]) for c in summary["postprocess"]["classes"]} == {
        ("hard", 0.99)
    }
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert rows.values.tolist() == [[image.name, "0", "", ""]]  # every class gated out
