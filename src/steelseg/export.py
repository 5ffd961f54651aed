"""Export a trained checkpoint to ONNX or TorchScript, for inference without steelseg.

    steelseg-export CHECKPOINT --format onnx --out model.onnx
    steelseg-export CHECKPOINT --format torchscript --out model.pt

The exported graph is the module's forward with the normalisation inside it:

* input ``image``: grey pixel values 0..255, ``(N, 1, H, W)``, uint8 (default) or float32
  (``--input-dtype``); N, H and W are dynamic (H and W multiples of 32; resize images to the
  ``input_size`` of the metadata, which the model was trained at);
* output ``logits``: float32 ``(N, 1, H, W)``; ``sigmoid(logits) >= threshold`` is a defect.

Beside the file, ``<file>.json`` holds the metadata: input size, threshold, the tuned
post-processing and TTA when ``steelseg-tune`` stored some, the source checkpoint, and the
largest absolute difference from the PyTorch module measured on random inputs right after export
(ONNX through onnxruntime, TorchScript through ``torch.jit.load``).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from steelseg.checkpoint import tensor_bytes
from steelseg.dataset import STRIDE
from steelseg.io import (
    DiskFullError,
    atomic_write_bytes,
    atomic_write_text,
    check_out_folder,
    check_space,
    disk_full,
    file_digest,
    locked,
    remove_stale,
)
from steelseg.model import SteelSegModule, normalise
from steelseg.postprocess import PostProcess, load_tuned

FORMATS = ("onnx", "torchscript")
ONNX_EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export(dynamo=True / False)
INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
#: largest |exported - module| logit difference accepted, per unit of the largest |logit| (at
#: least 1): float32 rounding grows with the logits' size (a trained model's reach 10-30)
TOLERANCE = 1e-4


class ExportModule(nn.Module):
    """The network plus its input normalisation, free of Lightning and of steelseg code.

    Shape:
        image: (N, 1, H, W) grey values 0..255 (uint8 or float). Returns (N, 1, H, W) logits.
    """

    def __init__(self, module: SteelSegModule) -> None:
        super().__init__()
        self.net = module.net
        self.register_buffer("mean", module.mean.detach().clone())  # (C, 1, 1), pixel units
        self.register_buffer("std", module.std.detach().clone())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(normalise(image, self.mean, self.std))


def _example(size: tuple[int, int], batch: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 1, *size), generator=g).to(dtype)


def _check_inputs(size: tuple[int, int], dtype: torch.dtype) -> list[torch.Tensor]:
    """Random images for the comparison: two batch sizes at the size, one at another size."""
    other = (size[0] + STRIDE, size[1] - STRIDE if size[1] > STRIDE else size[1] + STRIDE)
    return [_example(size, 2, dtype, 1), _example(size, 3, dtype, 2), _example(other, 1, dtype, 3)]


def export_onnx(model: ExportModule, example: torch.Tensor, path: Path, exporter: str) -> None:
    """Write ``model`` as a single-file ONNX graph with dynamic batch, height and width."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        target = Path(tmp) / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=4096)
                h = torch.export.Dim("h32", min=1, max=256)  # height / 32
                w = torch.export.Dim("w32", min=1, max=256)
                dims = {"image": {0: batch, 2: STRIDE * h, 3: STRIDE * w}}
                how = {"dynamo": True, "external_data": False, "dynamic_shapes": dims}
            else:
                axes = {0: "batch", 2: "height", 3: "width"}
                how = {
                    "dynamo": False,
                    "opset_version": 17,
                    "dynamic_axes": {"image": axes, "logits": axes},
                }
            torch.onnx.export(
                model, (example,), target, input_names=["image"], output_names=["logits"], **how
            )
        atomic_write_bytes(path, target.read_bytes())


def check_onnx(model: ExportModule, path: Path, inputs: list[torch.Tensor]) -> float:
    """Largest |onnxruntime - PyTorch| logit difference over ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = 0.0
    for x in inputs:
        (got,) = session.run(["logits"], {"image": x.numpy()})
        with torch.inference_mode():
            want = model(x).numpy()
        diff = max(diff, float(np.abs(got - want).max()))
    return diff


def export_torchscript(model: ExportModule, example: torch.Tensor, path: Path) -> None:
    """Trace ``model`` (shapes stay dynamic: the network has no shape-dependent branches)."""
    with warnings.catch_warnings():
        # jit is deprecated in favour of torch.export, and smp's input-size check traces as a
        # constant; both are harmless here and the comparison below checks the result.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example,), check_trace=False)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        target = Path(tmp) / path.name
        traced.save(str(target))
        atomic_write_bytes(path, target.read_bytes())


def check_torchscript(model: ExportModule, path: Path, inputs: list[torch.Tensor]) -> float:
    """Largest |torch.jit.load(path) - PyTorch| logit difference over ``inputs``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    diff = 0.0
    with torch.inference_mode():
        for x in inputs:
            diff = max(diff, float((loaded(x) - model(x)).abs().max()))
    return diff


def metadata_path(path: str | os.PathLike) -> Path:
    """``<file>.json`` beside an exported file."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def export(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "onnx",
    input_dtype: str = "uint8",
    onnx_exporter: str = "dynamo",
    use_tuned: bool = True,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out``, check it against the module, write the metadata.

    Args:
        checkpoint: A steelseg ``.ckpt``.
        out: The file to write (``.onnx`` or ``.pt`` by convention).
        fmt: One of :data:`FORMATS`.
        input_dtype: ``uint8`` or ``float32`` input images (values 0..255 either way).
        onnx_exporter: ``dynamo`` (torch.export based, the default of torch.onnx) or
            ``torchscript`` (the older exporter: much faster, deprecated by PyTorch).
        use_tuned: Record the post-processing ``steelseg-tune`` stored beside the checkpoint.

    Returns:
        The metadata written to ``<out>.json``, with ``max_abs_diff``.

    Raises:
        ValueError: an unknown option, a bad checkpoint, or an export that differs from the
            module by more than :data:`TOLERANCE` times its largest logit.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {list(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"unknown input dtype {input_dtype!r}; choose from {list(INPUT_DTYPES)}")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {onnx_exporter!r}; choose from {ONNX_EXPORTERS}")
    check_out_folder(Path(out).parent)
    module = SteelSegModule.load_from_checkpoint(checkpoint).eval()
    model = ExportModule(module).eval()
    size = module.hparams.get("input_size")
    size = (int(size[0]), int(size[1])) if size else (256, 1600)
    dtype = INPUT_DTYPES[input_dtype]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = _example(size, 2, dtype, 0)
    inputs = _check_inputs(size, dtype)
    with locked(out, "the export"):
        remove_stale(out.parent, out.name)  # what a killed export left
        # torch's writers abort the process when the disk fills up under them: check first
        # (the weights, twice: the exporter's temporary copy and the checked file)
        check_space(out, 2 * tensor_bytes(model.state_dict()) + (1 << 20))
        staged = out.with_name(f".{out.name}.staged")  # checked here before it becomes ``out``
        try:
            diff, scale, tolerance = _write_checked(
                model, example, inputs, staged, fmt, onnx_exporter
            )
            meta = _metadata(
                module, checkpoint, out, fmt, onnx_exporter, input_dtype, size, use_tuned
            )
            meta |= {
                "sha256": file_digest(staged),
                "max_abs_diff": diff,
                "max_abs_logit": scale,
                "tolerance": tolerance,
                "checked_on": [list(x.shape) for x in inputs],
            }
            # complete-or-absent: no metadata while the file changes; the metadata, written
            # last, names the file's sha256 (see load_metadata)
            metadata_path(out).unlink(missing_ok=True)
            os.replace(staged, out)
        finally:
            staged.unlink(missing_ok=True)
        atomic_write_text(metadata_path(out), json.dumps(meta, indent=2) + "\n")
    return meta


def _write_checked(
    model: ExportModule,
    example: torch.Tensor,
    inputs: list[torch.Tensor],
    path: Path,
    fmt: str,
    onnx_exporter: str,
) -> tuple[float, float, float]:
    """Export to ``path`` and compare it with the module: (largest difference, largest logit,
    tolerance). Raises ``ValueError`` when the export fails or differs too much."""
    try:
        if fmt == "onnx":
            export_onnx(model, example, path, onnx_exporter)
            diff = check_onnx(model, path, inputs)
        else:
            export_torchscript(model, example, path)
            diff = check_torchscript(model, path, inputs)
    except DiskFullError:
        raise
    except Exception as e:  # exporters raise many types; say which step failed, in one line
        if disk_full(e):
            raise DiskFullError(path) from None
        other = "another --onnx-exporter" if fmt == "onnx" else "--format onnx"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{fmt} export failed ({type(e).__name__}: {first}); try {other}") from e
    with torch.inference_mode():
        scale = max([1.0] + [float(model(x).abs().max()) for x in inputs])
    tolerance = TOLERANCE * scale
    if not diff <= tolerance:
        raise ValueError(
            f"the exported model differs from the checkpoint by up to {diff:.3g} logits "
            f"(> {tolerance:.3g} = {TOLERANCE} x the largest logit {scale:.3g}); "
            "nothing was written. Try the other --onnx-exporter or --format"
        )
    return diff, scale, tolerance


def _metadata(
    module: SteelSegModule,
    checkpoint: str | os.PathLike,
    out: Path,
    fmt: str,
    onnx_exporter: str,
    input_dtype: str,
    size: tuple[int, int],
    use_tuned: bool,
) -> dict[str, Any]:
    """What ``<file>.json`` says of an export (the check's numbers are added by the caller)."""
    tuned = load_tuned(checkpoint) if use_tuned else None
    postprocess = tuned[0] if tuned else PostProcess(threshold=float(module.hparams.threshold))
    return {
        "format": fmt,
        "file": out.name,
        "onnx_exporter": onnx_exporter if fmt == "onnx" else None,
        "input": {
            "name": "image",
            "dtype": input_dtype,
            "shape": ["N", 1, "H", "W"],
            "values": "grey 0..255, no normalisation (it is inside the graph)",
        },
        "output": {"name": "logits", "shape": ["N", 1, "H", "W"], "activation": "sigmoid"},
        "input_size": list(size),
        "size_multiple": STRIDE,
        "threshold": postprocess.threshold,
        "postprocess": postprocess.to_dict(),
        "postprocess_tuned": tuned is not None,
        "tta": list(tuned[1]) if tuned else [],
        "arch": module.hparams.arch,
        "encoder_name": module.hparams.encoder_name,
        "checkpoint": str(Path(checkpoint).resolve()),
        "torch": torch.__version__,
    }


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a whole export at ``path``, checked against the file.

    Raises:
        FileNotFoundError: no such export.
        ValueError: the export is incomplete (no metadata: it was stopped while writing) or its
            file is not the one the metadata describes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    try:
        meta = json.loads(metadata_path(path).read_text())
    except (OSError, ValueError):
        raise ValueError(
            f"{path} has no valid {metadata_path(path).name}: the export was stopped before it "
            "ended; run steelseg-export again"
        ) from None
    if meta.get("sha256") != file_digest(path):
        raise ValueError(
            f"{path} is not the file {metadata_path(path).name} describes (sha256 differs); "
            "run steelseg-export again"
        )
    return meta
