"""Runtimes: ONNX Runtime, OpenVINO and PyTorch at fp32 / bf16 / INT8, exports checked for
accuracy on the test split, the automatic choice, and prediction without PyTorch."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import exit_code
from steelseg import deploy, runtime
from steelseg.cli.eval import main as eval_main
from steelseg.cli.export import main as export_main
from steelseg.cli.predict import main as predict_main
from steelseg.export import export
from steelseg.io import file_digest
from steelseg.predict import Predictor

needs_openvino = pytest.mark.skipif(not runtime.installed("openvino"), reason="no openvino")
needs_bf16 = pytest.mark.skipif(not runtime.native_bf16(), reason="no native bf16 on this CPU")


@pytest.fixture(scope="module")
def onnx_file(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported to ONNX, accuracy-checked on its run's test split."""
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export(tiny_ckpt, out, "onnx", onnx_exporter="torchscript")
    return out


@pytest.fixture(scope="module")
def images(synth_root: Path) -> list[np.ndarray]:
    from steelseg.io import read_grey

    return [read_grey(p) for p in sorted((synth_root / "train_images").iterdir())[:3]]


# ----------------------------------------------------------------------------- engines
@pytest.mark.parametrize(
    ("name", "precision", "atol"),
    [
        ("onnxruntime", "fp32", 1e-4),
        pytest.param("openvino", "fp32", 1e-4, marks=needs_openvino),
        pytest.param("openvino", "bf16", 0.05, marks=[needs_openvino, needs_bf16]),
    ],
)
def test_export_runs_like_the_checkpoint(tiny_ckpt, onnx_file, images, name, precision, atol):
    want = Predictor.from_checkpoint(tiny_ckpt, "cpu").predict_proba(images)
    got = Predictor.from_export(onnx_file, name, precision)
    assert (got.runtime, got.precision, got.input_size) == (name, precision, (64, 320))
    np.testing.assert_allclose(got.predict_proba(images), want, atol=atol)


def test_torch_engine_probabilities_are_the_sigmoid_of_its_logits(tiny_ckpt, images):
    """The sigmoid runs on the model's device for PyTorch, in numpy for the other runtimes: the
    same numbers either way."""
    engine = Predictor.from_checkpoint(tiny_ckpt, "cpu").engine
    x = np.stack([cv2.resize(g, (320, 64), interpolation=cv2.INTER_AREA) for g in images])[:, None]
    masks, image = engine(x)
    probs, image_probs = engine.probabilities(x)
    assert probs.dtype == np.float32 and probs.shape == masks.shape and image_probs is None
    np.testing.assert_allclose(probs, runtime.sigmoid(masks), atol=1e-6)
    np.testing.assert_allclose(runtime.Engine.probabilities(engine, x)[0], probs, atol=1e-6)


@needs_bf16
def test_torch_bf16_on_the_cpu(tiny_ckpt, images):
    want = Predictor.from_checkpoint(tiny_ckpt, "cpu").predict_proba(images)
    got = Predictor.from_checkpoint(tiny_ckpt, "cpu", precision="bf16")
    assert got.describe() == "torch bf16 on cpu"
    np.testing.assert_allclose(got.predict_proba(images), want, atol=0.05)


def test_export_metadata_holds_the_accuracy_check(onnx_file):
    meta = runtime.load_metadata(onnx_file)
    acc = meta["accuracy"]
    assert acc["checked"] and acc["split"] == "test" and acc["tolerance"] == 0.005
    runs = {(r["runtime"], r["precision"]): r for r in acc["runs"]}
    assert ("onnxruntime", "fp32") in runs
    for r in runs.values():
        assert {"dice_per_image", "iou", "reference_dice_per_image", "dice_drop", "ok"} <= set(r)
        assert r["reference_dice_per_image"] == acc["reference"]["dice_per_image"]
    assert (meta["default"]["runtime"], meta["default"]["precision"]) in runs
    assert runs[("onnxruntime", "fp32")]["dice_drop"] == pytest.approx(0.0, abs=1e-9)


@needs_openvino
def test_openvino_and_int8_exports(tiny_ckpt, tmp_path, images, capsys):
    xml = tmp_path / "m.xml"
    assert export_main([str(tiny_ckpt), "--format", "openvino", "--out", str(xml),
                        "--onnx-exporter", "torchscript", "--no-progress"]) == 0  # fmt: skip
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert "openvino fp32: per-image Dice" in capsys.readouterr().out
    meta = runtime.load_metadata(xml)
    assert meta["format"] == "openvino" and meta["sha256"] == runtime.model_digest(xml)
    xml.with_suffix(".bin").write_bytes(b"changed")  # the weights are part of the export
    with pytest.raises(ValueError, match="sha256 differs"):
        runtime.load_metadata(xml)

    q = tmp_path / "m8.onnx"
    meta = export(tiny_ckpt, q, "onnx", onnx_exporter="torchscript", precision="int8",
                  calibration_images=16, tolerance=0.5)  # fmt: skip
    assert meta["precision"] == "int8" and meta["calibration_images"] == 16
    assert {r["precision"] for r in meta["accuracy"]["runs"]} == {"int8"}
    p = Predictor.from_export(q)
    assert p.precision == "int8"
    assert p.predict_proba(images).shape == (3, 256, 1600)
    with pytest.raises(ValueError, match="is not quantized"):
        Predictor.from_export(_fp32(tiny_ckpt, tmp_path), "onnxruntime", "int8")


def _fp32(ckpt: Path, tmp_path: Path) -> Path:
    out = tmp_path / "fp32.onnx"
    export(ckpt, out, "onnx", onnx_exporter="torchscript", check=False)
    return out


def test_an_export_failing_the_tolerance_is_refused(tiny_ckpt, tmp_path, monkeypatch):
    """A runtime that scores below fp32 by more than the tolerance: refused, both numbers."""
    from steelseg import accuracy

    real = accuracy.score_predictor

    def worse(predictor, *args, **kwargs):
        scores = real(predictor, *args, **kwargs)
        if predictor.runtime != "torch":
            scores["dice_per_image"] -= 0.01
        return scores

    monkeypatch.setattr(accuracy, "score_predictor", worse)
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"fails the accuracy check: .* vs .* for PyTorch fp32"):
        export(tiny_ckpt, out, "onnx", onnx_exporter="torchscript", precision="fp32")
    assert not out.exists() and not runtime.metadata_path(out).exists()


# ----------------------------------------------------------------------------- the choice
def copy_of_run(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint inside a copy of its run (no runtime chosen yet)."""
    ckpt = tmp_path / "run" / "checkpoints" / "m.ckpt"
    run = tiny_ckpt.parent.parent
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text((run / "config.yaml").read_text())
    ckpt.parent.mkdir()
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    return ckpt


def test_auto_picks_a_runtime_within_tolerance_and_caches_it(
    tiny_ckpt, tmp_path, monkeypatch, caplog
):
    ckpt = copy_of_run(tiny_ckpt, tmp_path)
    with caplog.at_level(logging.WARNING, logger="steelseg.deploy"):
        p = deploy.load_predictor(ckpt, progress=False)
    said = caplog.text  # what it measures, before it starts; then each pair (no bar here)
    n = len(deploy.runtime_candidates())
    assert (
        f"choosing a runtime for m.ckpt: timing and scoring PyTorch fp32 (the reference) and {n} "
        in said
    )
    assert "steelseg-export m.ckpt --choose-runtime does this ahead of time" in said
    assert f"auto: measuring torch fp32, the reference (1 of {n + 1})" in said
    assert f"auto: measuring {deploy.runtime_candidates()[-1][0]}" in said and "chose " in said
    assert p.choice is not None and (p.runtime, p.precision) == (
        p.choice["runtime"],
        p.choice["precision"],
    )
    rows = p.choice["runs"]
    assert rows[0]["runtime"] == "torch" and rows[0]["precision"] == "fp32"
    chosen = next(r for r in rows if (r["runtime"], r["precision"]) == (p.runtime, p.precision))
    assert chosen["ok"] and all(chosen["model_images_per_s"] >= r["model_images_per_s"]
                                for r in rows if r["ok"])  # fmt: skip
    assert ckpt.with_suffix(".runtime.json").is_file()

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(deploy, "_measure", no_measuring)
    caplog.clear()
    again = deploy.load_predictor(ckpt)
    assert (again.runtime, again.precision) == (p.runtime, p.precision)
    assert "choosing a runtime" not in caplog.text  # cached: nothing to say
    plain = deploy.load_predictor(ckpt, "torch", "fp32")
    assert plain.describe() == "torch fp32 on cpu" and plain.choice is None


def test_the_runtime_choice_ahead_of_time(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """steelseg-export CKPT --choose-runtime measures once; a later load only reads it."""
    ckpt = copy_of_run(tiny_ckpt, tmp_path)
    assert export_main([str(ckpt), "--choose-runtime", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"--runtime auto runs {ckpt} on " in out and "PyTorch fp32" in out
    assert len([line for line in out.splitlines() if line.startswith("  ")]) >= 2  # the table

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(deploy, "_measure", no_measuring)
    p = deploy.load_predictor(ckpt)
    assert p.choice == deploy.cached_choice(ckpt)


def test_export_needs_out_unless_choosing_the_runtime(tiny_ckpt, capsys):
    with pytest.raises(SystemExit):
        export_main([str(tiny_ckpt)])
    assert "--out is required (or --choose-runtime)" in capsys.readouterr().err


def test_auto_without_validation_images_is_pytorch(tiny_ckpt, tmp_path):
    bare = tmp_path / "bare.ckpt"  # outside any run folder
    bare.write_bytes(tiny_ckpt.read_bytes())
    p = deploy.load_predictor(bare)
    assert p.describe() == "torch fp32 on cpu"
    assert "no validation images" in p.choice["reason"]


# ----------------------------------------------------------------------------- commands
def test_eval_on_another_runtime_reports_both_numbers(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    assert eval_main([str(tiny_ckpt), "--split", "val", "--out", str(out), "--no-progress",
                      "--panels", "0", "--runtime", "onnxruntime"]) == 0  # fmt: skip
    result = json.loads((out / "eval.json").read_text())
    assert (result["runtime"], result["precision"]) == ("onnxruntime", "fp32")
    check = result["runtime_check"]
    assert check["ok"] and abs(check["dice_drop"]) < 1e-6
    assert "runtime check" in (out / "report.html").read_text()
    assert "onnxruntime fp32: per-image Dice" in capsys.readouterr().out


def test_predict_from_an_export(onnx_file, synth_root, tmp_path, capsys):
    out = tmp_path / "pred"
    assert predict_main([str(onnx_file), str(synth_root / "test_images"), "--out", str(out),
                         "--no-progress"]) == 0  # fmt: skip
    summary = json.loads((out / "predict.json").read_text())
    assert summary["runtime"] in ("onnxruntime", "openvino") and summary["images"] == 3
    assert "model on" in capsys.readouterr().err


# Prediction from an exported file where PyTorch and the training stack cannot be imported.
NO_TORCH = """
import sys
for name in ("torch", "torchvision", "pytorch_lightning", "lightning", "segmentation_models_pytorch",
             "albumentations", "timm", "omegaconf", "hydra", "matplotlib"):
    sys.modules[name] = None  # importing any of them now fails
from steelseg.cli.predict import main
code = main(sys.argv[1:])
assert not [m for m in ("torch", "pytorch_lightning") if sys.modules.get(m) is not None]
sys.exit(code)
"""


def test_predict_without_torch(onnx_file, synth_root, tmp_path):
    out = tmp_path / "pred"
    args = [str(onnx_file), str(synth_root / "test_images"), "--out", str(out), "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_TORCH), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((out / "masks").iterdir())) == 3
    # a checkpoint needs PyTorch: one line saying so
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_TORCH), str(onnx_file.with_suffix(".ckpt")),
         str(synth_root / "test_images"), "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- bad input
def _fake_export(path: Path, data: bytes, **meta) -> Path:
    """A file with steelseg metadata that matches it (so only the model itself is wrong)."""
    path.write_bytes(data)
    base = {"format": runtime.file_format(path), "input_size": [64, 320], "threshold": 0.5,
            "postprocess": {"threshold": 0.5}, "tta": []}  # fmt: skip
    meta = base | meta | {"sha256": runtime.model_digest(path)}
    runtime.metadata_path(path).write_text(json.dumps(meta))
    return path


def _onnx_with_input(path: Path, shape: tuple[int, ...]) -> bytes:
    conv = torch.nn.Conv2d(shape[1], 1, 1)
    torch.onnx.export(conv, (torch.zeros(shape),), path, dynamo=False, input_names=["image"])
    return path.read_bytes()


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("not_a_model", "is not a model onnxruntime can load"),
        ("three_channels", "takes 3-channel images"),
        ("fixed_size", "takes 96x32 images only, not the input size 320x64"),
        ("no_metadata", "has no valid x.onnx.json"),
    ],
)
def test_bad_exported_files_are_one_line(tmp_path, synth_root, capsys, case, match):
    model = tmp_path / "x.onnx"
    if case == "not_a_model":
        _fake_export(model, b"this is not an onnx file")
    elif case == "three_channels":
        _fake_export(model, _onnx_with_input(tmp_path / "c.onnx", (1, 3, 64, 320)))
    elif case == "fixed_size":
        _fake_export(model, _onnx_with_input(tmp_path / "c.onnx", (1, 1, 32, 96)))
    else:
        model.write_bytes(b"x")
    out = tmp_path / "out"
    args = [str(model), str(synth_root / "test_images"), "--out", str(out), "--runtime",
            "onnxruntime"]  # fmt: skip
    assert exit_code(predict_main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steelseg-predict: error:") and match in err[0]
    assert not out.exists()


def test_runtime_not_installed_names_the_extra(
    tiny_ckpt, synth_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "openvino", None)
    out = tmp_path / "out"
    args = [str(tiny_ckpt), str(synth_root / "test_images"), "--out", str(out), "--runtime",
            "openvino"]  # fmt: skip
    assert exit_code(predict_main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "steelseg-predict: error: runtime openvino is not installed here; install it with: "
        "pip install 'steelseg[openvino]'"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--tolerance", "0"], "argument --tolerance: must be in (0, 1), got 0"),
        (["--tolerance", "1.5"], "argument --tolerance: must be in (0, 1), got 1.5"),
        (["--precision", "int8", "--calibration-images", "8"], "at least 16 calibration images"),
        (["--format", "torchscript", "--precision", "bf16"], "torchscript exports run fp32"),
        (["--format", "openvino"], "the openvino export is a .xml file"),
    ],
)
def test_export_bad_input(tiny_ckpt, tmp_path, capsys, args, match):
    out = tmp_path / "m.onnx"
    assert exit_code(export_main, [str(tiny_ckpt), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
    assert not out.exists()


def test_int8_with_too_few_train_images(tiny_ckpt, synth_root, tmp_path, capsys):
    rows = (tiny_ckpt.parents[2] / "prepared" / "split.csv").read_text().splitlines()
    train = [r for r in rows[1:] if r.split(",")[1] == "train"]
    split = tmp_path / "split.csv"  # a split whose train part has 3 images
    split.write_text("\n".join([rows[0], *train[:3]] + [r for r in rows[1:] if r not in train]))
    out = tmp_path / "m.onnx"
    args = [str(tiny_ckpt), "--out", str(out), "--precision", "int8", "--split-file", str(split),
            "--data-root", str(synth_root)]  # fmt: skip
    assert exit_code(export_main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "at least 16 calibration images from the train split; found 3" in err[0]
    )
    assert not out.exists()


def test_digest_covers_the_weights_file(tmp_path):
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    xml.write_text("<net/>")
    bin_.write_bytes(b"1")
    before = runtime.model_digest(xml)
    bin_.write_bytes(b"2")
    assert runtime.model_digest(xml) != before and file_digest(xml) in before
