"""steelseg.export: ONNX and TorchScript files that match the module and load without steelseg."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from steelseg.cli.export import main
from steelseg.export import TOLERANCE, export, metadata_path
from steelseg.model import SteelSegModule

# Run in a fresh interpreter where importing steelseg fails, so the file must stand alone.
NO_STEELSEG = "import sys; sys.modules['steelseg'] = None\n"

ONNX_RUNNER = """
import numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
for i, name in enumerate(sys.argv[2:]):
    (logits,) = session.run(["logits"], {"image": np.load(name)})
    np.save(f"y{i}.npy", logits)
assert not any(m == "steelseg" or m.startswith("steelseg.") for m in sys.modules if sys.modules[m])
"""

TORCHSCRIPT_RUNNER = """
import warnings
import numpy as np, torch
warnings.simplefilter("ignore")
model = torch.jit.load(sys.argv[1])
for i, name in enumerate(sys.argv[2:]):
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.load(name)))
    np.save(f"y{i}.npy", logits.numpy())
assert not any(m == "steelseg" or m.startswith("steelseg.") for m in sys.modules if sys.modules[m])
"""


def run_without_steelseg(
    runner: str, model: Path, xs: list[np.ndarray], tmp_path: Path
) -> list[np.ndarray]:
    """Logits of each input from ``model`` run by ``runner`` in a steelseg-free interpreter."""
    names = []
    for i, x in enumerate(xs):
        names.append(str(tmp_path / f"x{i}.npy"))
        np.save(names[-1], x)
    code = NO_STEELSEG + textwrap.dedent(runner)
    done = subprocess.run(
        [sys.executable, "-c", code, str(model), *names],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [np.load(tmp_path / f"y{i}.npy") for i in range(len(xs))]


def module_logits(ckpt: Path, x: np.ndarray) -> np.ndarray:
    module = SteelSegModule.load_from_checkpoint(ckpt).eval()
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    ("fmt", "dtype", "runner"),
    [
        ("onnx", "uint8", ONNX_RUNNER),
        ("onnx", "float32", ONNX_RUNNER),
        # a fresh interpreter importing torch: 7 s on a 2-core machine
        pytest.param("torchscript", "uint8", TORCHSCRIPT_RUNNER, marks=pytest.mark.slow),
    ],
)
def test_export_matches_module_without_steelseg(tiny_ckpt, tmp_path, fmt, dtype, runner):
    out = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    meta = export(tiny_ckpt, out, fmt, dtype, onnx_exporter="torchscript")
    assert meta["max_abs_diff"] < TOLERANCE
    stored = json.loads(metadata_path(out).read_text())
    assert stored == json.loads(json.dumps(meta))
    assert stored["input_size"] == [64, 320] and stored["threshold"] == 0.5
    assert stored["input"]["dtype"] == dtype and stored["postprocess_tuned"] is False
    rng = np.random.default_rng(0)
    shapes = [(3, 1, 64, 320), (1, 1, 128, 256)]  # dynamic batch, height and width
    xs = [rng.integers(0, 256, shape).astype(dtype) for shape in shapes]
    for x, got in zip(xs, run_without_steelseg(runner, out, xs, tmp_path)):
        assert got.shape == x.shape
        assert np.abs(got - module_logits(tiny_ckpt, x)).max() < TOLERANCE


@pytest.mark.slow
def test_dynamo_onnx_exporter(tiny_ckpt, tmp_path):
    out = tmp_path / "model.onnx"
    meta = export(tiny_ckpt, out, "onnx", "uint8", onnx_exporter="dynamo")
    assert meta["max_abs_diff"] < TOLERANCE and meta["onnx_exporter"] == "dynamo"
    x = np.random.default_rng(1).integers(0, 256, (2, 1, 96, 288)).astype(np.uint8)
    (got,) = run_without_steelseg(ONNX_RUNNER, out, [x], tmp_path)
    assert np.abs(got - module_logits(tiny_ckpt, x)).max() < TOLERANCE


def test_cli_and_errors(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main([str(tiny_ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    assert "max abs logit difference from the module" in capsys.readouterr().out
    assert out.is_file() and metadata_path(out) == tmp_path / "m.pt.json"
    assert main([str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"steelseg-export: error: checkpoint {tmp_path / 'none.ckpt'} does not exist"]
    with pytest.raises(
        ValueError,
        match=r"unknown format 'tflite'; choose from \['onnx', 'openvino', 'torchscript'\]",
    ):
        export(tiny_ckpt, tmp_path / "x", "tflite")
    assert not (tmp_path / "x.onnx").exists()
