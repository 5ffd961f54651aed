"""A deployment without PyTorch: a fresh virtual environment with steelseg installed without
its dependencies plus requirements/deploy-<runtime>.txt predicts from an exported file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from steelseg.export import export

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd}: {done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_predict_in_an_environment_without_torch(tiny_ckpt, synth_root, tmp_path, name):
    model = tmp_path / ("model.onnx" if name == "onnxruntime" else "model.xml")
    export(tiny_ckpt, model, "onnx" if name == "onnxruntime" else "openvino",
           onnx_exporter="torchscript", check=False)  # fmt: skip
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, timeout=300)
    pip = [
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    _run(*pip, "--no-deps", ROOT, timeout=900)
    _run(*pip, "-r", ROOT / "requirements" / f"deploy-{name}.txt", timeout=900)
    probe = "import importlib.util as u; print(u.find_spec('torch') is None)"
    assert _run(venv / "bin" / "python", "-c", probe).stdout.strip() == "True"
    out = tmp_path / "pred"
    done = _run(venv / "bin" / "steelseg-predict", model, synth_root / "test_images", "--out",
                out, "--no-progress", timeout=600)  # fmt: skip
    assert f"model on {name}" in done.stderr
    summary = json.loads((out / "predict.json").read_text())
    assert summary["images"] == 3 and summary["runtime"] == name
    assert len(list((out / "masks").iterdir())) == 3
