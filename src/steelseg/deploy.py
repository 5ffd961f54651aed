"""Where a model runs: the runtime and precision every command predicts with.

:func:`load_predictor` takes a checkpoint or a file written by ``steelseg-export`` and the
``--runtime`` / ``--precision`` asked for. ``auto`` on a CPU picks the fastest runtime and
precision installed here whose per-image Dice on the model's own validation images stays within
the tolerance of PyTorch fp32's (:func:`choose_runtime`, measured once and cached beside the
checkpoint in ``<name>.runtime.json``; ONNX Runtime and OpenVINO run a checkpoint through an
ONNX export made once in ``<name>.exports/``). An exported file runs on the default its export
checked. On a GPU, PyTorch.

Importing this module, and predicting from an ONNX or OpenVINO file, needs no PyTorch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.accuracy import check_runtimes, check_text
from steelseg.inputs import Source
from steelseg.io import atomic_write_text, file_digest, json_ready, locked, read_grey
from steelseg.labelled import labelled_sources
from steelseg.postprocess import PostProcess, sidecar_path
from steelseg.predict import Predictor
from steelseg.runtime import (
    DICE_TOLERANCE,
    FILE_FORMATS,
    check_precision,
    check_runtime,
    check_tolerance,
    cpu_name,
    installed,
    load_metadata,
    native_bf16,
    require,
    throughput,
    versions,
)

log = logging.getLogger(__name__)


#: validation images the automatic runtime choice checks accuracy on
AUTO_IMAGES = 16


def load_predictor(
    model: str | os.PathLike,
    runtime: str = "auto",
    precision: str = "auto",
    device: str | None = None,
    tta: Sequence[str] | None = None,
    batch_size: int = 8,
    use_tuned: bool = True,
    tolerance: float = DICE_TOLERANCE,
    progress: bool | None = False,
    overrides: Mapping[str, Any] | None = None,
) -> Predictor:
    """The model of a checkpoint or exported file, on the runtime and precision asked for: the
    one way every command and notebook gets a model.

    The post-processing and flips are the stored ones
    (:func:`steelseg.postprocess.model_settings`: the ``steelseg-tune`` sidecar, else an
    export's metadata, else the model's threshold), each value of ``overrides`` (e.g. the
    command line's ``--threshold``) replacing one of them, for every class.

    ``auto`` on a CPU: the fastest installed runtime and precision whose per-image Dice on the
    checkpoint's validation images stays within ``tolerance`` of PyTorch fp32's
    (:func:`choose_runtime`); on a GPU, PyTorch. An exported file runs on its checked default
    (see :func:`export`). ``runtime="torch", precision="fp32"`` is the plain PyTorch module.
    ONNX Runtime and OpenVINO run a checkpoint through an export made once beside it.

    The returned predictor's ``choice`` says how ``auto`` chose (None when it did not).
    """
    PostProcess(**dict(overrides or {}))  # a bad value fails before any model work
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    tolerance = check_tolerance(tolerance)
    rt = None if runtime == "auto" else check_runtime(runtime)
    pr = None if precision == "auto" else check_precision(precision)
    if rt is not None:
        require(rt)  # before anything is exported or measured
    if path.suffix.lower() in FILE_FORMATS:
        return Predictor.from_export(
            path, rt, pr, tta=tta, batch_size=batch_size, use_tuned=use_tuned, overrides=overrides
        )
    gpu = str(device).startswith("cuda") if device else _cuda_available()
    choice = None
    if rt is None:
        if gpu:
            rt = "torch"
        else:
            choice = choose_runtime(path, tolerance, pr, batch_size, progress)
            rt, pr = choice["runtime"], choice["precision"]
    if rt == "torch":
        predictor = Predictor.from_checkpoint(
            path,
            device,
            tta=tta,
            batch_size=batch_size,
            use_tuned=use_tuned,
            precision=pr,
            overrides=overrides,
        )
    else:
        if gpu:
            raise ValueError(
                f"{rt} runs on the CPU here; use --runtime torch on {device or 'cuda'}"
            )
        predictor = _on_export(path, rt, pr or "fp32", tta, batch_size, use_tuned, overrides)
    predictor.choice = choice
    return predictor


def model_outputs(model: str | os.PathLike) -> tuple[int, bool]:
    """The (classes, gated) of a checkpoint or exported file, read without building the
    network (to refuse a task the model cannot do before anything runs)."""
    path = Path(model)
    if path.suffix.lower() in FILE_FORMATS:
        meta = load_metadata(path)
        return int(meta.get("classes", 1)), bool(meta.get("gated", False))
    require("torch")  # a checkpoint needs it: one line saying so
    from steelseg.checkpoint import load, steelseg_parts

    hp, _ = steelseg_parts(load(path), path)
    return int(hp.get("classes", 1)), bool(hp.get("gate", False))


def _on_export(
    checkpoint: Path,
    runtime: str,
    precision: str,
    tta: Sequence[str] | None,
    batch_size: int,
    use_tuned: bool,
    overrides: Mapping[str, Any] | None = None,
) -> Predictor:
    """A checkpoint on ONNX Runtime / OpenVINO, through its cached export; the post-processing
    and TTA are the checkpoint's tuned ones (read now, so later tuning counts)."""
    file = cached_export(checkpoint, "int8" if precision == "int8" else "fp32")
    predictor = Predictor.from_export(
        file,
        runtime,
        precision,
        tta=tta,
        batch_size=batch_size,
        use_tuned=use_tuned,
        overrides=overrides,
        tuned_beside=checkpoint,
    )
    predictor.model_file = predictor.checkpoint = checkpoint
    return predictor


def cached_export(checkpoint: str | os.PathLike, precision: str = "fp32") -> Path:
    """The ONNX export of ``checkpoint`` in ``<name>.exports/`` (made when missing or made from
    other weights). INT8 ones are calibrated on the run's train split. Their logits are checked
    against the module; accuracy is what :func:`choose_runtime` measures on validation images
    (and ``steelseg-eval`` on any split), so the export's own test-split check is skipped."""
    checkpoint = Path(checkpoint)
    file = checkpoint.with_suffix(".exports") / f"{precision}.onnx"
    with locked(file, "the export"):
        try:
            meta = load_metadata(file)
            if meta.get("checkpoint_sha256") == file_digest(checkpoint):
                return file
        except (OSError, ValueError):
            pass
        from steelseg.export import export

        log.warning("exporting %s to %s (once; later runs reuse it)", checkpoint.name, file)
        export(
            checkpoint,
            file,
            "onnx",
            onnx_exporter="torchscript",  # seconds, where dynamo takes a minute on a big model
            use_tuned=False,
            precision="int8" if precision == "int8" else "auto",
            check=False,
        )
    return file


def runtime_candidates(precision: str | None = None) -> list[tuple[str, str]]:
    """The (runtime, precision) pairs a CPU here can run a checkpoint on, PyTorch fp32 first."""
    pairs = [("torch", "fp32")]
    if native_bf16():
        pairs.append(("torch", "bf16"))
    for runtime in ("onnxruntime", "openvino"):
        if installed(runtime):
            pairs.append((runtime, "fp32"))
            if runtime == "openvino" and native_bf16():
                pairs.append((runtime, "bf16"))
            pairs.append((runtime, "int8"))  # an export quantized once, on train images
    return [p for p in pairs if precision is None or p[1] == precision]


def choose_runtime(
    checkpoint: str | os.PathLike,
    tolerance: float = DICE_TOLERANCE,
    precision: str | None = None,
    batch_size: int = 8,
    progress: bool | None = False,
) -> dict[str, Any]:
    """The fastest (runtime, precision) on this CPU that keeps per-image Dice within
    ``tolerance`` of PyTorch fp32's on the checkpoint's validation images.

    The candidates are PyTorch fp32 and bf16, ONNX Runtime fp32 and INT8, OpenVINO fp32, bf16
    and INT8, as installed (bf16 only on a CPU with it; INT8 through an export calibrated once
    on the run's train split). Measured once (model-only images/s on a batch of validation
    images, and per-image Dice on up to :data:`AUTO_IMAGES` of them, with the tuned
    post-processing) and cached in ``<name>.runtime.json``, which is measured again when the
    checkpoint, its tuned values, the CPU, the installed runtimes or the tolerance change.
    Without validation images (a checkpoint outside its run folder), PyTorch fp32.

    Measuring says what it does before it starts (a warning), then shows a progress bar with
    an estimate of the time left (``progress``; without one, a line per pair). ``steelseg-export
    CKPT --choose-runtime`` runs this step ahead of time.

    Returns:
        ``{"runtime", "precision", "speedup", "reason", "runs": [...]}``.
    """
    checkpoint = Path(checkpoint)
    cache = runtime_choice_path(checkpoint)
    key = _choice_key(checkpoint, tolerance, precision, batch_size)
    with locked(cache, "the runtime choice"):
        cached = cached_choice(checkpoint, key)
        if cached is not None:
            return cached
        reference = Predictor.from_checkpoint(checkpoint, "cpu", precision="fp32")  # bad: here
        val = labelled_sources(checkpoint, "val", None, None)
        if val is None:
            return {
                "runtime": "torch",
                "precision": precision or "fp32",
                "speedup": 1.0,
                "reason": "no validation images to check other runtimes on",
                "runs": [],
            }
        choice = _measure(checkpoint, reference, val, tolerance, precision, batch_size, progress)
        atomic_write_text(cache, json.dumps(json_ready({"key": key, "choice": choice}), indent=2))
    return choice


def runtime_choice_path(checkpoint: str | os.PathLike) -> Path:
    """Where :func:`choose_runtime` caches its choice: ``<name>.runtime.json``."""
    return Path(checkpoint).with_suffix(".runtime.json")


def cached_choice(
    checkpoint: str | os.PathLike, key: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The cached runtime choice of ``checkpoint`` when it still holds (same checkpoint, tuned
    values, CPU, runtimes and settings: ``key``, default the defaults'), else None."""
    checkpoint = Path(checkpoint)
    key = key if key is not None else _choice_key(checkpoint, DICE_TOLERANCE, None, 8)
    try:
        cached = json.loads(runtime_choice_path(checkpoint).read_text())
        return cached["choice"] if cached.get("key") == key else None
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def _choice_key(
    checkpoint: Path, tolerance: float, precision: str | None, batch_size: int
) -> dict[str, Any]:
    """What a cached choice depends on."""
    tuned = sidecar_path(checkpoint)
    return {
        "checkpoint_sha256": file_digest(checkpoint),
        "tuned_sha256": file_digest(tuned) if tuned.is_file() else None,
        "cpu": cpu_name(),
        "versions": versions(),
        "tolerance": tolerance,
        "precision": precision,
        "batch_size": batch_size,
    }


def _measure(
    checkpoint: Path,
    reference: Predictor,
    val: tuple[list[Source], Any],
    tolerance: float,
    precision: str | None,
    batch_size: int,
    progress: bool | None,
) -> dict[str, Any]:
    """Score and time every runtime candidate on validation images (see choose_runtime)."""
    sources, mask_of = val
    sources = sources[:AUTO_IMAGES]
    batch = np.stack([reference.network_input(read_grey(s.path)) for s in sources[:batch_size]])
    batch = batch[:, None]  # (N, 1, h, w) as the engines take it
    pairs = runtime_candidates(precision)
    log.warning(
        "choosing a runtime for %s: timing and scoring PyTorch fp32 (the reference) and %d "
        "runtime/precision pairs (%s) on %d validation images, exporting to %s as needed; "
        "once, then cached "
        "in %s (steelseg-export %s --choose-runtime does this ahead of time)",
        checkpoint.name,
        len(pairs),
        ", ".join(f"{r} {p}" for r, p in pairs),
        len(sources),
        checkpoint.with_suffix(".exports").name,
        runtime_choice_path(checkpoint).name,
        checkpoint.name,
    )
    with _Steps(len(pairs) + 1, progress) as steps:
        steps.next("torch fp32, the reference")

        def candidates():
            for runtime, p in pairs:
                steps.next(f"{runtime} {p}")
                yield runtime, p, partial(_candidate, checkpoint, reference, runtime, p, batch_size)
            steps.next("done")

        def speed(predictor: Predictor) -> dict[str, float]:
            return {"model_images_per_s": throughput(predictor.engine, batch)}

        ref, rows = check_runtimes(
            reference, candidates(), sources, mask_of, tolerance, False, "auto", speed
        )
    ref_speed = next(
        (
            r["model_images_per_s"]
            for r in rows
            if (r["runtime"], r["precision"]) == ("torch", "fp32")
        ),
        None,
    ) or throughput(reference.engine, batch)
    for r in rows:
        r["speedup"] = r["model_images_per_s"] / ref_speed
    passed = [r for r in rows if r["ok"]]
    if not passed:
        tried = "; ".join(check_text(r, "validation") for r in rows) or "none could run here"
        raise ValueError(
            f"no {precision or ''} runtime keeps per-image Dice within {tolerance} of PyTorch "
            f"fp32: {tried}. Use --runtime torch, or another --precision or --tolerance"
        )
    best = max(passed, key=lambda r: r["model_images_per_s"])
    log.warning(
        "chose %s %s: %.1fx PyTorch fp32 (measured in %.0f s)",
        best["runtime"],
        best["precision"],
        best["speedup"],
        sum(r["seconds_to_measure"] for r in rows),
    )
    return {
        "runtime": best["runtime"],
        "precision": best["precision"],
        "speedup": best["speedup"],
        "reason": (
            f"the fastest of {len(rows)} runtime/precision pairs measured here within "
            f"{tolerance} per-image Dice of PyTorch fp32 on {ref['n_images']} validation images"
        ),
        "runs": rows,
    }


def _candidate(
    checkpoint: Path, reference: Predictor, runtime: str, precision: str, batch_size: int
) -> Predictor:
    """The checkpoint on one runtime and precision of the choice (its cached export for ONNX
    Runtime and OpenVINO, made when first asked for)."""
    if (runtime, precision) == ("torch", "fp32"):
        return reference
    if runtime == "torch":
        return Predictor.from_checkpoint(checkpoint, "cpu", precision=precision)
    return _on_export(checkpoint, runtime, precision, None, batch_size, True)


class _Steps:
    """The runtime choice's progress: a bar over the pairs with the time left (tqdm's
    estimate from the pairs done), or, without a bar, a line per pair."""

    def __init__(self, total: int, progress: bool | None) -> None:
        from tqdm import tqdm

        self.total, self.done = total, -1
        self.bar = tqdm(
            total=total,
            desc="choosing a runtime",
            unit="pair",
            disable=False if progress else None if progress is None else True,
            leave=False,
        )
        self.quiet = self.bar.disable

    def next(self, what: str) -> None:
        """Start measuring ``what`` (the one before is done)."""
        if self.done >= 0:
            self.bar.update()
        self.done += 1
        if self.done < self.total:
            self.bar.set_postfix_str(what)
            if self.quiet:
                log.warning("auto: measuring %s (%d of %d)", what, self.done + 1, self.total)

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _cuda_available() -> bool:
    """Whether PyTorch is installed and sees a CUDA GPU."""
    if not installed("torch"):
        return False
    import torch

    return torch.cuda.is_available()
