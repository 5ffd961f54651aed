"""steelseg.predict: the Predictor API on the tiny checkpoint, and the steelseg-predict command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from steelseg import rle
from steelseg.cli.predict import main
from steelseg.model import SteelSegModule
from steelseg.postprocess import PostProcess, save_tuned
from steelseg.predict import Predictor, read_grey


@pytest.fixture(scope="module")
def predictor(tiny_ckpt: Path) -> Predictor:
    return Predictor.from_checkpoint(tiny_ckpt, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def images(synth_root: Path) -> list[np.ndarray]:
    paths = sorted((synth_root / "train_images").iterdir())[:3]
    return [read_grey(p) for p in paths]


def module_proba(predictor: Predictor, image: np.ndarray) -> np.ndarray:
    """Sigmoid of the module on one image already at network size."""
    with torch.inference_mode():
        x = torch.from_numpy(image)[None, None]
        return predictor.module(x).sigmoid()[0, 0].numpy()


# ----------------------------------------------------------------------------- API
def test_loads_once_with_the_trained_size(predictor):
    assert predictor.input_size == (64, 320)
    assert predictor.device == "cpu" and (predictor.runtime, predictor.precision) == (
        "torch",
        "fp32",
    )
    assert not predictor.module.training
    assert predictor.postprocess == PostProcess(threshold=0.5) and predictor.tta == ()


def test_full_size_image_resized_there_and_back_exactly(predictor, images):
    image = images[0]
    prob = predictor.predict_proba(image)
    assert prob.shape == rle.SHAPE and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    small = cv2.resize(image, (320, 64), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(
        module_proba(predictor, small), (1600, 256), interpolation=cv2.INTER_LINEAR
    )
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    mask = predictor.predict(image)
    assert mask.dtype == bool and mask.shape == rle.SHAPE
    np.testing.assert_array_equal(mask, prob >= 0.5)


def test_image_at_the_trained_size_is_not_resized(predictor, images):
    small = cv2.resize(images[1], (320, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(
        predictor.predict_proba(small), module_proba(predictor, small), atol=1e-6
    )


def test_wrong_sizes_come_back_at_their_own_size(predictor, images):
    odd = cv2.resize(images[0], (333, 101))
    out = predictor.predict_proba([images[0], odd])
    assert isinstance(out, list) and [p.shape for p in out] == [rle.SHAPE, (101, 333)]
    masks = predictor.predict([odd, odd])
    assert masks.shape == (2, 101, 333) and masks.dtype == bool


def test_colour_and_stacked_inputs(predictor, images):
    grey = images[2]
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    np.testing.assert_allclose(
        predictor.predict_proba(bgr), predictor.predict_proba(grey), atol=1e-6
    )
    stacked = predictor.predict_proba(np.stack(images[:2]))
    assert stacked.shape == (2, *rle.SHAPE)
    with pytest.raises(ValueError, match="shape"):
        predictor.predict_proba(np.zeros((2, 2, 8, 8, 1), np.uint8))


def test_batch_equals_one_by_one(predictor, images):
    batch = predictor.predict_proba(images)  # batch_size 2: batches of 2 and 1
    assert batch.shape == (3, *rle.SHAPE)
    for image, prob in zip(images, batch):
        np.testing.assert_allclose(prob, predictor.predict_proba(image), atol=1e-5)


def test_flip_tta_averages_flipped_predictions(tiny_ckpt, predictor, images):
    small = cv2.resize(images[0], (320, 64), interpolation=cv2.INTER_AREA)
    tta = Predictor.from_checkpoint(tiny_ckpt, device="cpu", tta=["hflip", "vflip"])
    plain = module_proba(predictor, small)
    h = module_proba(predictor, np.ascontiguousarray(small[:, ::-1]))[:, ::-1]
    v = module_proba(predictor, np.ascontiguousarray(small[::-1]))[::-1]
    got = tta.predict_proba(small)
    np.testing.assert_allclose(got, (plain + h + v) / 3, atol=1e-5)
    assert np.abs(got - plain).max() > 1e-4  # the flips do change the answer


def test_postprocess_override_per_call(predictor, images):
    pp = PostProcess(threshold=0.5, min_total_area=10**9)
    assert not predictor.predict(images[0], postprocess=pp).any()


def test_tuned_sidecar_is_used_unless_told_not_to(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "copy.ckpt"  # never write beside the shared tiny checkpoint
    shutil.copyfile(tiny_ckpt, ckpt)
    tuned = PostProcess(threshold=0.3, min_component_area=7)
    save_tuned(ckpt, tuned, ["vflip"], {"score": 0.5})
    p = Predictor.from_checkpoint(ckpt, device="cpu")
    assert p.postprocess == tuned and p.tta == ("vflip",)
    p = Predictor.from_checkpoint(ckpt, device="cpu", use_tuned=False)
    assert p.postprocess == PostProcess() and p.tta == ()
    p = Predictor.from_checkpoint(ckpt, device="cpu", tta=[])
    assert p.postprocess == tuned and p.tta == ()


def test_bad_files_are_named(tmp_path, synth_root):
    junk = tmp_path / "junk.jpg"
    junk.write_text("not an image")
    with pytest.raises(ValueError, match="junk.jpg: not an image"):
        read_grey(junk)
    good = next((synth_root / "train_images").iterdir()).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cut.jpg: truncated JPEG"):
        read_grey(cut)
    with pytest.raises(ValueError, match="missing.png"):
        read_grey(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SteelSegModule.load_from_checkpoint(tmp_path / "none.ckpt")
    with pytest.raises(ValueError, match="junk.jpg is truncated or not a checkpoint"):
        SteelSegModule.load_from_checkpoint(junk)
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a steelseg checkpoint"):
        SteelSegModule.load_from_checkpoint(tmp_path / "other.ckpt")


# ----------------------------------------------------------------------------- CLI
def run_cli(*argv: str) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        return e.code


@pytest.fixture
def kaggle3(synth_root: Path, tmp_path: Path) -> Path:
    """A Kaggle-layout folder with 3 of the synthetic images (2 with a defect) and their rows."""
    ann = rle.read_annotations(synth_root / "train.csv")
    defective = sorted(set(ann["ImageId"]))[:2]
    clean = sorted({p.name for p in (synth_root / "train_images").iterdir()} - set(ann["ImageId"]))
    ids = [*defective, *clean[:1]]
    root = tmp_path / "kaggle"
    (root / "train_images").mkdir(parents=True)
    for i in ids:
        shutil.copyfile(synth_root / "train_images" / i, root / "train_images" / i)
    ann[ann["ImageId"].isin(ids)].to_csv(root / "train.csv", index=False)
    return root


def test_cli_on_a_kaggle_folder_writes_everything(tiny_ckpt, kaggle3, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(tiny_ckpt, kaggle3, "--out", out, "--batch-size", "2") == 0
    ids = sorted(p.name for p in (kaggle3 / "train_images").iterdir())
    stems = sorted(Path(i).stem + ".png" for i in ids)
    for sub in ("masks", "overlays", "panels"):
        assert sorted(p.name for p in (out / sub).iterdir()) == stems
    panel = cv2.imread(str(out / "panels" / stems[0]))
    assert panel.shape == (4 * (256 + 28), 1600, 3)
    assert cv2.imread(str(out / "overlays" / stems[0])).shape == (256, 1600, 3)
    df = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert list(df.columns) == ["ImageId", "ClassId", "EncodedPixels", "ClassName"]
    assert sorted(df["ImageId"]) == ids and set(df["ClassId"]) == {"0"}
    for iid, encoded in zip(df["ImageId"], df["EncodedPixels"]):
        saved = cv2.imread(str(out / "masks" / f"{Path(iid).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert saved.dtype == np.uint8 and set(np.unique(saved)) <= {0, 255}
        np.testing.assert_array_equal(rle.decode(encoded), saved // 255)
    summary = json.loads((out / "predict.json").read_text())
    assert summary["images"] == 3 and summary["panels"] == 3 and summary["skipped"] == {}
    assert "3 image(s) predicted" in capsys.readouterr().out
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.parametrize(
    "flags, written",
    [
        (["--outputs", "masks"], {"masks"}),
        (["--outputs", "overlays,coco"], {"overlays", "predictions.coco.json"}),
        (["--outputs", "panels"], {"panels"}),
        (["--outputs", "none"], set()),
        (["--masks-only"], {"masks", "predictions.coco.json"}),
    ],
)
def test_cli_outputs_writes_only_what_is_asked(tiny_ckpt, kaggle3, tmp_path, flags, written):
    full, out = tmp_path / "full", tmp_path / "out"
    assert run_cli(tiny_ckpt, kaggle3, "--out", full, "--runtime", "torch") == 0
    assert run_cli(tiny_ckpt, kaggle3, "--out", out, "--runtime", "torch", *flags) == 0
    always = {"predictions.csv", "predict.json"}
    assert {p.name for p in out.iterdir()} == always | written
    assert (out / "predictions.csv").read_text() == (full / "predictions.csv").read_text()
    for sub in written & {"masks", "overlays", "panels"}:
        assert {p.name for p in (out / sub).iterdir()} == {p.name for p in (full / sub).iterdir()}
    summary = json.loads((out / "predict.json").read_text())
    assert summary["panels"] == (3 if "panels" in written else 0)


@pytest.mark.parametrize(
    "flags",
    [["--outputs", "masks,pictures"], ["--outputs", ""], ["--outputs", "masks", "--masks-only"]],
)
def test_cli_bad_outputs_are_usage_errors(tiny_ckpt, kaggle3, tmp_path, flags, capsys):
    assert run_cli(tiny_ckpt, kaggle3, "--out", tmp_path / "o", *flags) == 2
    assert "--outputs" in capsys.readouterr().err


def test_cli_panels_only_with_ground_truth(tiny_ckpt, synth_root, tmp_path):
    out = tmp_path / "out"
    assert run_cli(tiny_ckpt, synth_root / "test_images", "--out", out) == 0
    assert len(list((out / "masks").iterdir())) == 3
    assert len(list((out / "overlays").iterdir())) == 3
    assert not (out / "panels").exists()


def test_cli_skips_bad_files_and_says_so(tiny_ckpt, synth_root, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    tests = sorted((synth_root / "test_images").iterdir())[:2]
    for p in tests:
        shutil.copyfile(p, folder / p.name)
    (folder / "junk.jpg").write_text("junk")
    (folder / "notes.txt").write_text("not an image suffix: not an input")
    cv2.imwrite(str(folder / "small.png"), np.full((100, 300), 90, np.uint8))
    out = tmp_path / "out"
    code = run_cli(
        tiny_ckpt,
        folder,
        tmp_path / "absent.jpg",
        "--out",
        out,
        "--threshold",
        "0.6",
        "--tta",
        "hflip",
    )
    assert code == 3
    err = capsys.readouterr()
    assert "junk.jpg: not an image" in err.err and "absent.jpg" in err.err
    assert "2 skipped" in err.out
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == sorted([*(p.stem + ".png" for p in tests), "small.png"])
    assert cv2.imread(str(out / "masks" / "small.png"), cv2.IMREAD_GRAYSCALE).shape == (100, 300)
    summary = json.loads((out / "predict.json").read_text())
    assert summary["postprocess"]["threshold"] == 0.6 and summary["tta"] == ["hflip"]
    assert set(map(lambda k: Path(k).name, summary["skipped"])) == {"junk.jpg", "absent.jpg"}


def test_cli_bad_checkpoint_is_one_line(tiny_ckpt, synth_root, tmp_path, capsys):
    inputs = synth_root / "test_images"
    assert run_cli(tmp_path / "none.ckpt", inputs, "--out", tmp_path / "o") == 2
    (tmp_path / "fake.ckpt").write_text("hello")
    assert run_cli(tmp_path / "fake.ckpt", inputs, "--out", tmp_path / "o") == 2
    assert run_cli(tiny_ckpt, tmp_path / "nothing*.jpg", "--out", tmp_path / "o") == 2
    assert run_cli(tiny_ckpt, tmp_path / "absent", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "none.ckpt does not exist" in err[0]
    assert "fake.ckpt is truncated or not a checkpoint" in err[1]
    assert len(err) == 4  # one line each, the reason included
    pattern, absent = tmp_path / "nothing*.jpg", tmp_path / "absent"
    assert (
        err[2] == f"steelseg-predict: error: no input images ({pattern}: no image file matches it)"
    )
    assert err[3] == f"steelseg-predict: error: no input images ({absent}: no such file or folder)"
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "o").exists()


def test_without_a_trained_size_images_are_padded_to_32(tiny_ckpt, images):
    module = SteelSegModule.load_from_checkpoint(tiny_ckpt)
    module.hparams.input_size = None  # as in a checkpoint from before input_size was stored
    p = Predictor(module, device="cpu")
    assert p.input_size is None
    image = np.ascontiguousarray(images[0][:70, :100])
    prob = p.predict_proba(image)
    assert prob.shape == (70, 100)
    padded = cv2.copyMakeBorder(image, 0, 26, 0, 28, cv2.BORDER_REFLECT_101)  # to 96x128
    np.testing.assert_allclose(prob, module_proba(p, padded)[:70, :100], atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_prediction_in_bf16_matches_cpu_fp32(tiny_ckpt, predictor, images):
    gpu = Predictor.from_checkpoint(tiny_ckpt, device="cuda", batch_size=2)
    assert gpu.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    got, want = gpu.predict_proba(images), predictor.predict_proba(images)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < 0.05  # bf16 rounding of the logits, nothing more
