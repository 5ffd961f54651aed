"""Where a model runs: PyTorch, ONNX Runtime or OpenVINO, at fp32, bf16 or INT8.

An :class:`Engine` maps a batch of grey images ``(N, 1, H, W)`` (uint8 or float32 0..255) to
float32 mask logits ``(N, C, H, W)`` (C = the model's classes) and, for a model with the gate
head, image logits ``(N, C)`` (the second output of an exported graph, ``image_logits``);
:class:`steelseg.predict.Predictor` does the rest (resizing, test-time flips, post-processing)
the same way on every engine.

* ``torch``: the checkpoint's module, eager; ``bf16`` runs under autocast (channels_last on a
  CPU). No INT8.
* ``onnxruntime``: an exported ``.onnx`` file; fp32, or INT8 when the file was quantized
  (``steelseg-export --precision int8``). ONNX Runtime's CPU provider has no bf16 kernels.
* ``openvino``: an exported ``.xml`` (OpenVINO IR) or ``.onnx`` file; ``fp32`` forces f32
  inference, ``bf16`` lets the CPU plugin run bf16 (AMX / AVX512-BF16), INT8 when the file was
  quantized.

This module needs numpy only; each runtime is imported when first used, and a missing one is a
one-line error naming the extra to install (:func:`require`). Exported files are described by
``<file>.json`` (:func:`load_metadata`), written by :mod:`steelseg.export`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.io import file_digest

#: every smp encoder downsamples 5 times: network inputs are multiples of this
STRIDE = 32
RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
#: the pip extra that installs each runtime (``pip install 'steelseg[openvino]'``)
EXTRAS = {"torch": None, "onnxruntime": "onnxruntime", "openvino": "openvino"}
#: the import name of each runtime
MODULE_NAMES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
#: exported model files by suffix -> the format steelseg-export wrote
FILE_FORMATS = {".onnx": "onnx", ".xml": "openvino", ".pt": "torchscript"}
#: runtimes that can run each exported format
FORMAT_RUNTIMES = {
    "onnx": ("onnxruntime", "openvino"),
    "openvino": ("openvino",),
    "torchscript": ("torch",),
}
#: the default tolerance: an export or runtime whose per-image Dice falls further below
#: PyTorch fp32's on labelled images is refused
DICE_TOLERANCE = 0.005


# ----------------------------------------------------------------------------- what is here
def installed(runtime: str) -> bool:
    """Whether ``runtime`` can be imported here (without importing it)."""
    name = MODULE_NAMES[check_runtime(runtime)]
    if name in sys.modules:
        return sys.modules[name] is not None  # None: blocked on purpose
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {list(RUNTIMES)}")
    return runtime


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    return precision


def check_tolerance(tolerance: float) -> float:
    """A per-image Dice tolerance: a number in (0, 1)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise ValueError(f"tolerance must be a number in (0, 1), got {tolerance!r}")
    if not 0.0 < float(tolerance) < 1.0:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    return float(tolerance)


def require(runtime: str) -> Any:
    """Import and return ``runtime``'s module; one line naming the extra when it is missing."""
    check_runtime(runtime)
    if not installed(runtime):
        extra = EXTRAS[runtime]
        how = f"pip install 'steelseg[{extra}]'" if extra else "pip install torch"
        raise ValueError(f"runtime {runtime} is not installed here; install it with: {how}")
    return importlib.import_module(MODULE_NAMES[runtime])


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name, e.g. ``Intel(R) Xeon(R) Processor``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def native_int8() -> bool:
    """Whether this CPU has INT8 dot-product instructions (AMX-INT8, AVX512-VNNI, AVX-VNNI)."""
    return bool({"amx_int8", "avx512_vnni", "avx_vnni"} & cpu_flags())


def versions() -> dict[str, str | None]:
    """The version of each installed runtime (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in RUNTIMES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ----------------------------------------------------------------------------- metadata
def metadata_path(path: str | os.PathLike) -> Path:
    """``<file>.json`` beside an exported file."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def weights_path(path: str | os.PathLike) -> Path | None:
    """The ``.bin`` beside an OpenVINO ``.xml``; None for single-file formats."""
    path = Path(path)
    return path.with_suffix(".bin") if path.suffix == ".xml" else None


def model_digest(path: str | os.PathLike) -> str:
    """sha256 of an exported model: of its file, and of the weights file that goes with it."""
    digest = file_digest(Path(path))
    bin_ = weights_path(path)
    if bin_ is not None:
        digest += ":" + (file_digest(bin_) if bin_.is_file() else "missing")
    return digest


def file_format(path: str | os.PathLike) -> str:
    """The export format of a model file, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ValueError(
            f"{path} is not an exported model (expected {', '.join(FILE_FORMATS)}) nor a .ckpt"
        )
    return FILE_FORMATS[suffix]


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
        if not isinstance(meta, dict):
            raise ValueError
    except (OSError, ValueError):
        raise ValueError(
            f"{path} has no valid {metadata_path(path).name} (steelseg-export writes it last; "
            "without it the export is incomplete or not steelseg's); run steelseg-export again"
        ) from None
    if meta.get("sha256") != model_digest(path):
        raise ValueError(
            f"{path} is not the file {metadata_path(path).name} describes (sha256 differs); "
            "run steelseg-export again"
        )
    return meta


# ----------------------------------------------------------------------------- engines
def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 probabilities of float32 logits (no overflow warnings for large logits)."""
    out = np.negative(logits, dtype=np.float32)
    np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


#: what an engine returns: mask logits, and image logits (None without the gate head)
Outputs = tuple[np.ndarray, np.ndarray | None]


class Engine:
    """A model on a runtime: ``engine(x)`` -> ``(mask logits, image logits or None)``.

    Attributes:
        runtime: One of :data:`RUNTIMES`.
        precision: One of :data:`PRECISIONS`.
        input_dtype: What the model takes: ``np.uint8`` or ``np.float32`` (values 0..255).
        device: Where it runs (``cpu``, ``cuda:0``).
        fixed_size: ``(H, W)`` when the model only takes that input size, else None.
        classes: Mask channels C, when the model says (None: not known before a call, as
            for TorchScript).
        gated: Whether it has the image-level gate head, when the model says (None: not
            known before a call).

    Shape:
        x: (N, 1, H, W) grey 0..255. Returns float32 mask logits (N, C, H, W) and, with the
        gate head, float32 image logits (N, C), else None.
    """

    runtime: str = ""
    precision: str = "fp32"
    input_dtype: Any = np.uint8
    device: str = "cpu"
    fixed_size: tuple[int, int] | None = None
    classes: int | None = None
    gated: bool | None = None

    def __call__(self, x: np.ndarray) -> Outputs:  # pragma: no cover - abstract
        raise NotImplementedError

    def probabilities(self, x: np.ndarray) -> Outputs:
        """The sigmoid of :meth:`__call__`'s outputs: float32 mask probabilities (N, C, H, W)
        and image probabilities (N, C) or None."""
        masks, image = self(x)
        return sigmoid(masks), None if image is None else sigmoid(image)

    def describe(self) -> str:
        return f"{self.runtime} {self.precision} on {self.device}"


def _graph_input(shape: list[Any], dtype: str, path: Path) -> tuple[Any, tuple[int, int] | None]:
    """Check an exported graph's input (rank 4, one grey channel); its dtype and fixed size."""
    if len(shape) != 4:
        raise ValueError(
            f"{path} takes a {len(shape)}-D input {shape}; steelseg models take (N, 1, H, W)"
        )
    channels = shape[1]
    if isinstance(channels, int) and channels != 1:
        raise ValueError(
            f"{path} takes {channels}-channel images; steelseg exports take grey (N, 1, H, W) "
            "(the normalisation to the encoder's channels is inside the graph)"
        )
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"{path} takes {dtype} input; steelseg exports take uint8 or float32")
    h, w = shape[2], shape[3]
    fixed = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
    return (np.uint8 if dtype == "uint8" else np.float32), fixed


def _graph_outputs(shapes: list[list[Any]], path: Path) -> tuple[int | None, bool]:
    """Check an exported graph's outputs (mask logits (N, C, H, W), and with the gate head
    image logits (N, C)); its classes (None: not static) and whether it is gated."""
    ranks = [len(s) for s in shapes]
    if ranks not in ([4], [4, 2]):
        raise ValueError(
            f"{path} gives outputs of shapes {shapes}; steelseg exports give mask logits "
            "(N, C, H, W) and, with the gate head, image logits (N, C)"
        )
    classes = shapes[0][1]
    return (classes if isinstance(classes, int) and classes > 0 else None), len(shapes) == 2


class OnnxRuntimeEngine(Engine):
    """An ``.onnx`` file on ONNX Runtime's CPU provider (fp32, or the file's INT8)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, precision: str = "fp32", threads: int = 0) -> None:
        ort = require("onnxruntime")
        path = Path(path)
        if precision == "bf16":
            raise ValueError(
                "onnxruntime has no bf16 CPU kernels; use --runtime openvino for bf16, or "
                "--precision fp32 / int8"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a bad file
            raise ValueError(f"{path} is not a model onnxruntime can load ({_first(e)})") from None
        (inp,) = self.session.get_inputs()[:1]
        dtype = {"tensor(uint8)": "uint8", "tensor(float)": "float32"}.get(inp.type, inp.type)
        self.input_dtype, self.fixed_size = _graph_input(list(inp.shape), dtype, path)
        self.input_name = inp.name
        outputs = self.session.get_outputs()
        self.classes, self.gated = _graph_outputs([list(o.shape) for o in outputs], path)
        self.output_names = [o.name for o in outputs]
        self.precision = precision

    def __call__(self, x: np.ndarray) -> Outputs:
        masks, *image = self.session.run(self.output_names, {self.input_name: x})
        return _outputs(masks, image[0] if image else None)


class OpenVinoEngine(Engine):
    """An OpenVINO IR (``.xml`` + ``.bin``) or ``.onnx`` file on OpenVINO's CPU plugin.

    ``fp32`` forces f32 inference; ``bf16`` lets the plugin run bf16 where the CPU has it
    (refused on a CPU without it); ``int8`` needs a quantized file (its other layers run at
    the CPU's best precision).
    """

    runtime = "openvino"
    HINTS = {"fp32": "f32", "bf16": "bf16", "int8": None}

    def __init__(self, path: str | os.PathLike, precision: str = "fp32", threads: int = 0) -> None:
        ov = require("openvino")
        path = Path(path)
        if precision == "bf16" and not native_bf16():
            raise ValueError(
                f"this CPU ({cpu_name()}) has no native bf16 (amx_bf16 / avx512_bf16); use "
                "--precision fp32 or int8"
            )
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise ValueError(f"{path} is not a model OpenVINO can load ({_first(e)})") from None
        inp = model.inputs[0]
        shape = [d.get_length() if d.is_static else None for d in inp.get_partial_shape()]
        dtype = {"u8": "uint8", "f32": "float32"}.get(
            inp.get_element_type().get_type_name(), inp.get_element_type().get_type_name()
        )
        self.input_dtype, self.fixed_size = _graph_input(shape, dtype, path)
        self.classes, self.gated = _graph_outputs(
            [
                [d.get_length() if d.is_static else None for d in o.get_partial_shape()]
                for o in model.outputs
            ],
            path,
        )
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        hint = self.HINTS[check_precision(precision)]
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def __call__(self, x: np.ndarray) -> Outputs:
        out = self.request.infer({0: x})
        image = out[self.compiled.output(1)] if self.gated else None
        return _outputs(out[self.compiled.output(0)], image)


class TorchEngine(Engine):
    """A :class:`steelseg.model.SteelSegModule` (or any module of the same call) on PyTorch.

    ``bf16`` runs under autocast (channels_last on a CPU); a CUDA GPU with bf16 uses it by
    default, as training does. The module returns mask logits, or with the gate head a pair
    (mask logits, image logits); its ``hparams`` (``classes``, ``gate``) say which, when it
    has them (a TorchScript module tells at its first call).
    """

    runtime = "torch"

    def __init__(self, module: Any, device: Any = None, precision: str | None = None) -> None:
        torch = require("torch")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for, but CUDA is not available; use cpu")
        if precision is None:
            cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
            precision = "bf16" if cuda_bf16 else "fp32"
        if check_precision(precision) == "int8":
            raise ValueError(
                "INT8 runs on onnxruntime or openvino (--runtime onnxruntime|openvino "
                "--precision int8), not on torch"
            )
        if precision == "bf16" and device.type == "cpu" and not native_bf16():
            raise ValueError(
                f"this CPU ({cpu_name()}) has no native bf16 (amx_bf16 / avx512_bf16); use "
                "--precision fp32"
            )
        self.torch = torch
        self.torch_device = device
        self.device = str(device)
        self.module = module.eval().to(device)
        self.precision = precision
        hp = getattr(module, "hparams", None)
        if hp is not None:
            self.classes, self.gated = int(hp.get("classes", 1)), bool(hp.get("gate", False))
        net = getattr(self.module, "net", None)
        uses_cl = getattr(self.module, "use_channels_last", None)
        channels_last = (uses_cl(device) if uses_cl else False) or (
            precision == "bf16" and device.type == "cpu"  # oneDNN's bf16 kernels want NHWC
        )
        if net is not None and channels_last:
            net.to(memory_format=torch.channels_last)
        self.channels_last = channels_last

    def __call__(self, x: np.ndarray) -> Outputs:
        return self._run(x, probabilities=False)

    def probabilities(self, x: np.ndarray) -> Outputs:
        """As :meth:`Engine.probabilities`, with the sigmoid on the model's device, so a GPU
        leaves the host no per-pixel work (on an H200: 287 -> 318 full strips/s)."""
        return self._run(x, probabilities=True)

    def _run(self, x: np.ndarray, probabilities: bool) -> Outputs:
        torch = self.torch
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.torch_device, non_blocking=True)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                self.torch_device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
            ):
                out = self.module(t)
            masks, image = out if isinstance(out, (tuple, list)) else (out, None)
            outputs = [masks.float(), None if image is None else image.float()]
            if probabilities:  # in place: these outputs are this call's own
                outputs = [None if o is None else o.sigmoid_() for o in outputs]
            return _outputs(*(None if o is None else o.cpu().numpy() for o in outputs))


def _outputs(masks: Any, image: Any) -> Outputs:
    """An engine's outputs as float32 arrays."""
    return (
        np.asarray(masks, dtype=np.float32),
        None if image is None else np.asarray(image, dtype=np.float32),
    )


def open_engine(
    path: str | os.PathLike, runtime: str, precision: str = "fp32", threads: int = 0
) -> Engine:
    """An engine for an exported file: ``.onnx`` on onnxruntime or openvino, ``.xml`` on
    openvino, ``.pt`` (TorchScript) on torch."""
    fmt = file_format(path)
    check_runtime(runtime)
    check_precision(precision)
    if runtime not in FORMAT_RUNTIMES[fmt]:
        raise ValueError(
            f"{Path(path).name} ({fmt}) runs on {' or '.join(FORMAT_RUNTIMES[fmt])}, not {runtime}"
        )
    if runtime == "onnxruntime":
        return OnnxRuntimeEngine(path, precision, threads)
    if runtime == "openvino":
        return OpenVinoEngine(path, precision, threads)
    torch = require("torch")
    loaded = torch.jit.load(str(path), map_location="cpu")
    return TorchEngine(loaded, "cpu", precision)


def export_runtime(
    path: str | os.PathLike,
    meta: Mapping[str, Any],
    runtime: str | None = None,
    precision: str | None = None,
) -> tuple[str, str]:
    """The (runtime, precision) to run an export on: the ones asked for, checked, else the
    export's checked default when installed, else the first installed runtime of its format
    at the file's own precision.

    Raises:
        ValueError: a runtime that cannot run the format or is not installed (naming the
            extra), or INT8 asked of a file that is not quantized.
    """
    fmt = meta.get("format") or file_format(path)
    options = FORMAT_RUNTIMES.get(fmt, ())
    own = file_precision(meta)
    if runtime is None:
        default = meta.get("default") or {}
        if default.get("runtime") in options and installed(default["runtime"]):
            runtime = default["runtime"]
            if precision is None and default.get("precision") in PRECISIONS:
                precision = default["precision"]
        else:
            runtime = next((r for r in options if installed(r)), options[0] if options else "")
    if check_runtime(runtime) not in options:
        raise ValueError(f"{Path(path).name} ({fmt}) runs on {' or '.join(options)}, not {runtime}")
    require(runtime)
    precision = check_precision(precision or own)
    if precision == "int8" and own != "int8":
        raise ValueError(
            f"{Path(path).name} is not quantized; export an INT8 file with steelseg-export "
            "--precision int8"
        )
    if own == "int8":
        precision = "int8"  # the quantized layers run INT8 whatever else is asked
    return runtime, precision


def file_precision(meta: Mapping[str, Any]) -> str:
    """The precision an export was quantized to (``int8``), else ``fp32``."""
    return "int8" if meta.get("precision") == "int8" else "fp32"


def throughput(engine: Engine, x: np.ndarray, min_seconds: float = 1.0, min_reps: int = 2) -> float:
    """Model-only images per second of ``engine`` on the batch ``x`` (after one warm-up call)."""
    import time

    engine(x)
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        engine(x)
        reps += 1
    return reps * len(x) / (time.perf_counter() - start)


def _first(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__
