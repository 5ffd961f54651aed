"""A deployment without PyTorch: a fresh virtual environment with steelseg installed without
its dependencies plus requirements/deploy-<runtime>.txt predicts from an exported file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import checked_run, torchless_venv
from steelseg.export import export

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_predict_in_an_environment_without_torch(tiny_ckpt, synth_root, tmp_path, name):
    model = tmp_path / ("model.onnx" if name == "onnxruntime" else "model.xml")
    export(tiny_ckpt, model, "onnx" if name == "onnxruntime" else "openvino",
           onnx_exporter="torchscript", check=False)  # fmt: skip
    bin_ = torchless_venv(tmp_path / "venv", ROOT, ROOT / "requirements" / f"deploy-{name}.txt")
    out = tmp_path / "pred"
    done = checked_run(bin_ / "steelseg-predict", model, synth_root / "test_images", "--out",
                out, "--no-progress", timeout=600)  # fmt: skip
    assert f"model on {name}" in done.stderr
    summary = json.loads((out / "predict.json").read_text())
    assert summary["images"] == 3 and summary["runtime"] == name
    assert len(list((out / "masks").iterdir())) == 3
