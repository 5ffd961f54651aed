"""Export a trained checkpoint to ONNX, OpenVINO or TorchScript, checked for accuracy.

    steelseg-export CHECKPOINT --format onnx --out model.onnx
    steelseg-export CHECKPOINT --format openvino --out model.xml          # + model.bin
    steelseg-export CHECKPOINT --format onnx --precision int8 --out model-int8.onnx
    steelseg-export CHECKPOINT --format torchscript --out model.pt

The exported graph is the module's forward with the normalisation inside it:

* input ``image``: grey pixel values 0..255, ``(N, 1, H, W)``, uint8 (default) or float32
  (``--input-dtype``); N, H and W are dynamic (H and W multiples of 32; resize images to the
  ``input_size`` of the metadata, which the model was trained at, or, where it is null (a
  model trained on native-resolution crops), pad them to a multiple of 32);
* output ``logits``: float32 ``(N, C, H, W)``, C = the model's ``classes`` (1: any defect
  class; 4: one channel per Severstal class); ``sigmoid(logits) >= threshold`` is a defect;
* with the gate head (``model.gate``), a second output ``image_logits``: float32 ``(N, C)``,
  the image-level logit of each class, which the tuned post-processing's ``gate`` applies.

``--precision int8`` quantizes with ONNX Runtime's static post-training quantization (QDQ,
weights per channel) calibrated on train-split images; OpenVINO runs the same quantized graph.

Beside the file, ``<file>.json`` holds the metadata: input size, classes, whether the model is
gated, threshold, the tuned post-processing (its gate included) and TTA when ``steelseg-tune``
stored some, the source checkpoint, the largest absolute logit difference from the PyTorch
module on random inputs (every output), and the accuracy check:
per-image Dice and pixel IoU on the labelled test split for every installed runtime and
precision that runs the file, beside PyTorch fp32's, with the fastest that passes as the file's
``default``.

Where a model runs when it is used (``--runtime auto``) is :mod:`steelseg.deploy`'s choice.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from steelseg import rle
from steelseg.accuracy import check_runtimes, check_text
from steelseg.checkpoint import tensor_bytes
from steelseg.inputs import Source
from steelseg.io import (
    DiskFullError,
    atomic_write_bytes,
    atomic_write_text,
    check_out_folder,
    check_space,
    disk_full,
    file_digest,
    json_ready,
    locked,
    read_grey,
    remove_stale,
)
from steelseg.labelled import labelled_sources
from steelseg.model import SteelSegModule, normalise
from steelseg.postprocess import ClassPostProcess, ModelSettings, PostProcess, model_settings
from steelseg.predict import Predictor
from steelseg.runtime import (
    DICE_TOLERANCE,
    FILE_FORMATS,
    FORMAT_RUNTIMES,
    STRIDE,
    check_tolerance,
    installed,
    metadata_path,
    model_digest,
    native_bf16,
    open_engine,
    weights_path,
)

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino", "torchscript")
FORMAT_SUFFIX = {fmt: suffix for suffix, fmt in FILE_FORMATS.items()}
ONNX_EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export(dynamo=True / False)
INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
EXPORT_PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: INT8 calibration: train-split images used by default, and the fewest accepted
DEFAULT_CALIBRATION, MIN_CALIBRATION = 64, 16
#: largest |exported - module| logit difference accepted, per unit of the largest |logit| (at
#: least 1): float32 rounding grows with the logits' size (a trained model's reach 10-30)
TOLERANCE = 1e-4


class ExportModule(nn.Module):
    """The network plus its input normalisation, free of Lightning and of steelseg code.

    Shape:
        image: (N, 1, H, W) grey values 0..255 (uint8 or float), H and W multiples of 32.
        Returns (N, C, H, W) mask logits, or with the gate head a pair: those and (N, C)
        image logits.
    """

    def __init__(self, module: SteelSegModule) -> None:
        super().__init__()
        self.net = module.net
        self.register_buffer("mean", module.mean.detach().clone())  # (C, 1, 1), pixel units
        self.register_buffer("std", module.std.detach().clone())

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.net(normalise(image, self.mean, self.std))

    @property
    def output_names(self) -> list[str]:
        """The graph's output names: mask logits, and the gate head's image logits."""
        gated = getattr(self.net, "classification_head", None) is not None
        return ["logits", "image_logits"] if gated else ["logits"]


def _outputs(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A module's or loaded export's output as a tuple (one tensor per graph output)."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _example(size: tuple[int, int], batch: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 1, *size), generator=g).to(dtype)


def _check_inputs(size: tuple[int, int], dtype: torch.dtype) -> list[torch.Tensor]:
    """Random images for the comparison: two batch sizes at the size, one at another size."""
    other = (size[0] + STRIDE, size[1] - STRIDE if size[1] > STRIDE else size[1] + STRIDE)
    return [_example(size, 2, dtype, 1), _example(size, 3, dtype, 2), _example(other, 1, dtype, 3)]


def export_onnx(model: ExportModule, example: torch.Tensor, path: Path, exporter: str) -> None:
    """Write ``model`` as a single-file ONNX graph with dynamic batch, height and width."""
    names = model.output_names
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
                dynamic = {"image": axes, "logits": axes, "image_logits": {0: "batch"}}
                how = {
                    "dynamo": False,
                    "opset_version": 17,
                    "dynamic_axes": {k: dynamic[k] for k in ["image", *names]},
                }
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
                torch.onnx.export(
                    model, (example,), target, input_names=["image"], output_names=names, **how
                )
        atomic_write_bytes(path, target.read_bytes())


def check_onnx(model: ExportModule, path: Path, inputs: list[torch.Tensor]) -> float:
    """Largest |onnxruntime - PyTorch| logit difference over ``inputs`` (every output)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = 0.0
    for x in inputs:
        got = session.run(model.output_names, {"image": x.numpy()})
        with torch.inference_mode():
            want = _outputs(model(x))
        for g, w in zip(got, want, strict=True):
            diff = max(diff, float(np.abs(g - w.numpy()).max()))
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
            for g, w in zip(_outputs(loaded(x)), _outputs(model(x)), strict=True):
                diff = max(diff, float((g - w).abs().max()))
    return diff


def export(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "onnx",
    input_dtype: str = "uint8",
    onnx_exporter: str = "dynamo",
    use_tuned: bool = True,
    precision: str = "auto",
    tolerance: float = DICE_TOLERANCE,
    calibration_images: int = DEFAULT_CALIBRATION,
    data_root: str | os.PathLike | None = None,
    split_file: str | os.PathLike | None = None,
    batch_size: int = 8,
    progress: bool | None = False,
    check: bool = True,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out``, check it against the module, write the metadata.

    Two checks, both before anything is written:

    * logits: the file against the module on random inputs (largest absolute difference);
    * accuracy: per-image Dice and pixel IoU on the labelled test split of the checkpoint's
      run, on every installed runtime and precision that runs the file, against PyTorch fp32.
      The export is refused when none at the asked precision is within ``tolerance``; the
      fastest one that is becomes the file's default runtime (``default`` in the metadata).

    Args:
        checkpoint: A steelseg ``.ckpt``.
        out: The file to write (``.onnx``, ``.xml`` for OpenVINO (with a ``.bin`` beside it)
            or ``.pt`` for TorchScript).
        fmt: One of :data:`FORMATS`.
        input_dtype: ``uint8`` or ``float32`` input images (values 0..255 either way).
        onnx_exporter: ``dynamo`` (torch.export based, the default of torch.onnx) or
            ``torchscript`` (the older exporter: much faster, deprecated by PyTorch).
        use_tuned: Record the post-processing ``steelseg-tune`` stored beside the checkpoint.
        precision: ``int8``: quantize (static, per channel, calibrated on train-split images);
            ``fp32`` / ``bf16``: the default precision to run the fp32 file at (bf16 on a CPU
            that has it, OpenVINO); ``auto``: the fastest that passes the check.
        tolerance: Largest per-image Dice drop below PyTorch fp32 accepted, in (0, 1).
        calibration_images: Train-split images to calibrate INT8 on (at least
            :data:`MIN_CALIBRATION`).
        data_root, split_file: Where the labelled images are (default: the run's).
        batch_size: Images per forward pass of the accuracy check.
        progress: Progress bars for the check.
        check: Run the accuracy check (:func:`cached_export` leaves it to the runtime choice).

    Returns:
        The metadata written to ``<out>.json``, with ``max_abs_diff`` and ``accuracy``.

    Raises:
        ValueError: an unknown option, a runtime that is not installed, a bad checkpoint, too
            few calibration images, an export that differs from the module by more than
            :data:`TOLERANCE` times its largest logit, or one that fails the accuracy check.
    """
    out = Path(out)
    tolerance = _check_request(fmt, input_dtype, onnx_exporter, precision, tolerance, out)
    module = SteelSegModule.load_from_checkpoint(checkpoint).eval()
    model = ExportModule(module).eval()
    trained = module.hparams.get("input_size")  # None: native resolution (data.crop)
    input_size = (int(trained[0]), int(trained[1])) if trained else None
    stored = model_settings(checkpoint, use_tuned=use_tuned)
    reference = Predictor(module, "cpu", stored.postprocess, stored.tta, batch_size, "fp32")
    test = labelled_sources(checkpoint, "test", data_root, split_file) if check else None
    calibration = None
    if precision == "int8":
        calibration = _calibration(checkpoint, reference, calibration_images, data_root, split_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out, "the export"):
        remove_stale(out.parent, out.name)  # what a killed export left
        # torch's writers abort the process when the disk fills up under them: check first
        # (the weights, three times: the exporter's copy, the checked file, a converted one)
        check_space(out, 3 * tensor_bytes(model.state_dict()) + (1 << 20))
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            staged = staging / out.name  # checked here before it becomes ``out``
            checks = _write_staged(
                model, staged, fmt, onnx_exporter, input_size or rle.SHAPE, input_dtype, calibration
            )
            meta = _metadata(
                module,
                checkpoint,
                out,
                fmt,
                onnx_exporter,
                input_dtype,
                input_size,
                reference.postprocess,  # per class for a model of several (checked)
                stored,
            )
            meta |= {
                "precision": "int8" if precision == "int8" else "fp32",
                "calibration_images": len(calibration) if calibration is not None else None,
                "sha256": model_digest(staged),
                **checks,
            }
            meta |= _accuracy(staged, meta, reference, test, precision, tolerance, progress)
            _move_into_place(staged, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        atomic_write_text(metadata_path(out), json.dumps(json_ready(meta), indent=2) + "\n")
    return meta


def _check_request(
    fmt: str, input_dtype: str, onnx_exporter: str, precision: str, tolerance: float, out: Path
) -> float:
    """Refuse, in one line and before any work, an export that cannot be made; the tolerance."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {list(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"unknown input dtype {input_dtype!r}; choose from {list(INPUT_DTYPES)}")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {onnx_exporter!r}; choose from {ONNX_EXPORTERS}")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(EXPORT_PRECISIONS)}")
    tolerance = check_tolerance(tolerance)
    if fmt == "torchscript" and precision in ("bf16", "int8"):
        raise ValueError(
            f"torchscript exports run fp32; use --format onnx or openvino for {precision}"
        )
    _require_tools(fmt, precision)
    check_out_folder(out.parent)
    if FILE_FORMATS.get(out.suffix) != fmt:
        raise ValueError(f"--out {out.name}: the {fmt} export is a {FORMAT_SUFFIX[fmt]} file")
    return tolerance


def _write_staged(
    model: ExportModule,
    staged: Path,
    fmt: str,
    onnx_exporter: str,
    size: tuple[int, int],
    input_dtype: str,
    calibration: Sequence[np.ndarray] | None,
) -> dict[str, Any]:
    """Write the file at ``staged``: export (checked against the module), quantize, convert.
    Returns the logit check's numbers for the metadata."""
    dtype = INPUT_DTYPES[input_dtype]
    inputs = _check_inputs(size, dtype)
    onnx_file = staged.parent / f"{staged.stem}.fp32.onnx" if fmt != "torchscript" else staged
    diff, scale, logit_tolerance = _write_checked(
        model,
        _example(size, 2, dtype, 0),
        inputs,
        onnx_file,
        "onnx" if fmt != "torchscript" else fmt,
        onnx_exporter,
    )
    if calibration is not None:
        quantized = staged.parent / f"{staged.stem}.int8.onnx"
        quantize_int8(onnx_file, quantized, calibration)
        onnx_file = quantized
    if fmt == "openvino":
        convert_openvino(onnx_file, staged)
    elif fmt == "onnx":
        os.replace(onnx_file, staged)
    return {
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "tolerance": logit_tolerance,
        "checked_on": [list(x.shape) for x in inputs],
    }


def _move_into_place(staged: Path, out: Path) -> None:
    """Complete-or-absent: no metadata while the files change; the metadata, written last by
    the caller, names their sha256 (see steelseg.runtime.load_metadata)."""
    metadata_path(out).unlink(missing_ok=True)
    weights = weights_path(staged)
    if weights is not None:
        os.replace(weights, weights_path(out))
    os.replace(staged, out)


def _require_tools(fmt: str, precision: str) -> None:
    """One line naming the extra when a tool the export needs is missing."""
    needs = []
    if fmt in ("onnx", "openvino"):
        needs += ["onnx", "onnxscript", "onnxruntime"]  # the exporter, and the logit check
    if fmt == "openvino":
        needs.append("openvino")
    import importlib.util

    for name in needs:
        if importlib.util.find_spec(name) is None:
            extra = "openvino" if name == "openvino" else "onnxruntime"
            raise ValueError(
                f"{name} is not installed; the {fmt} export needs it: pip install 'steelseg[{extra}]'"
            )


def _calibration(
    checkpoint: str | os.PathLike,
    reference: Predictor,
    n: int,
    data_root: str | os.PathLike | None,
    split_file: str | os.PathLike | None,
) -> list[np.ndarray]:
    """``n`` train-split images at the network's input size, to calibrate INT8 on."""
    if n < MIN_CALIBRATION:
        raise ValueError(f"INT8 needs at least {MIN_CALIBRATION} calibration images, asked for {n}")
    train = labelled_sources(checkpoint, "train", data_root, split_file)
    found = len(train[0]) if train else 0
    if found < MIN_CALIBRATION:
        raise ValueError(
            f"INT8 needs at least {MIN_CALIBRATION} calibration images from the train split; "
            f"found {found} (pass --data-root / --split-file of the training data, or export "
            "--precision fp32)"
        )
    step = max(1, found // n)  # spread over the split (it is shuffled already)
    chosen = train[0][::step][:n]
    images = []
    for source in chosen:
        try:
            images.append(reference.network_input(read_grey(source.path)))
        except ValueError as e:
            log.warning("calibration: skipped %s: %s", source.path, e)
    if len(images) < MIN_CALIBRATION:
        raise ValueError(
            f"INT8 needs at least {MIN_CALIBRATION} calibration images; only {len(images)} of "
            "the train split could be read"
        )
    return images


def quantize_int8(source: Path, target: Path, images: Sequence[np.ndarray]) -> None:
    """ONNX Runtime static INT8 quantization (QDQ, weights per channel) of ``source``,
    calibrated on ``images`` (uint8 (H, W) at the network's input size)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = _input_name(source)
    dtype = np.uint8 if _input_is_uint8(source) else np.float32

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.batches, None)
            return None if image is None else {name: image[None, None].astype(dtype)}

    pre = source.with_name(source.stem + ".pre.onnx")
    quiet = logging.getLogger()  # the quantizer logs a warning per 1-D weight it skips
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        quiet.setLevel(level)
        pre.unlink(missing_ok=True)


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def _input_is_uint8(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def convert_openvino(source: Path, target: Path) -> None:
    """An ONNX file as OpenVINO IR: ``target`` (.xml) and its .bin, weights kept in fp32 (the
    CPU plugin picks the inference precision when it compiles)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(source)), str(target), compress_to_fp16=False)


def _accuracy(
    path: Path,
    meta: dict[str, Any],
    reference: Predictor,
    test: tuple[list[Source], Any] | None,
    precision: str,
    tolerance: float,
    progress: bool | None,
) -> dict[str, Any]:
    """The accuracy check of the staged export (see :func:`export`): ``accuracy`` and
    ``default`` entries of the metadata. Raises ``ValueError`` when it fails."""
    own = meta["precision"]
    runs = [
        (runtime, p)
        for runtime in FORMAT_RUNTIMES[meta["format"]]
        if installed(runtime)
        for p in ([own] if own == "int8" else ["fp32", "bf16"])
        if p != "bf16" or (runtime == "openvino" and native_bf16())
    ]
    if test is None:
        runtime, p = next((r for r in runs if precision in ("auto", r[1])), runs[0])
        return {
            "accuracy": {
                "checked": False,
                "reason": "no labelled test split found (the checkpoint is not in its run "
                "folder, or the run's data moved): pass --data-root and --split-file",
            },
            "default": {"runtime": runtime, "precision": p},
        }
    sources, mask_of = test

    def on(runtime: str, p: str) -> Callable[[], Predictor]:
        return lambda: Predictor(
            open_engine(path, runtime, p),
            postprocess=reference.postprocess,
            tta=reference.tta,
            batch_size=reference.batch_size,
            input_size=meta["input_size"],
            threshold=reference.model_threshold,
            classes=meta["classes"],
            gated=meta["gated"],
        )

    ref, rows = check_runtimes(
        reference, [(r, p, on(r, p)) for r, p in runs], sources, mask_of, tolerance, progress
    )
    asked = [r for r in rows if precision == "auto" or r["precision"] == precision]
    if not asked:
        raise ValueError(f"no installed runtime could run the {own} export; nothing was written")
    passed = [r for r in asked if r["ok"]]
    if not passed:
        worst = min(asked, key=lambda r: r["dice_drop"])
        raise ValueError(
            f"the {own} export fails the accuracy check: {check_text(worst, 'test')}; nothing "
            "was written"
            + (". Try more --calibration-images or --precision fp32" if own == "int8" else "")
        )
    best = max(passed, key=lambda r: r["images_per_s"])
    return {
        "accuracy": {
            "checked": True,
            "split": "test",
            "tolerance": tolerance,
            "reference": ref,
            "runs": rows,
        },
        "default": {"runtime": best["runtime"], "precision": best["precision"]},
    }


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
        scale = max([1.0] + [float(o.abs().max()) for x in inputs for o in _outputs(model(x))])
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
    input_size: tuple[int, int] | None,
    postprocess: PostProcess | ClassPostProcess,
    stored: ModelSettings,
) -> dict[str, Any]:
    """What ``<file>.json`` says of an export (the checks' numbers are added by the caller)."""
    classes, gated = int(module.hparams.get("classes", 1)), bool(module.hparams.get("gate", False))
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
        "output": {"name": "logits", "shape": ["N", classes, "H", "W"], "activation": "sigmoid"},
        "image_output": (
            {"name": "image_logits", "shape": ["N", classes], "activation": "sigmoid"}
            if gated
            else None
        ),
        "classes": classes,
        "gated": gated,
        "input_size": list(input_size) if input_size else None,  # None: pad to size_multiple
        "size_multiple": STRIDE,
        "threshold": postprocess.threshold,
        "model_threshold": float(module.hparams.threshold),
        "postprocess": postprocess.to_dict(),
        "postprocess_tuned": stored.sidecar is not None,
        "tta": list(stored.tta),
        "arch": module.hparams.arch,
        "encoder_name": module.hparams.encoder_name,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": file_digest(Path(checkpoint)),
        "torch": torch.__version__,
    }
