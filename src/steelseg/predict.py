"""Inference: a trained checkpoint applied to numpy images or image files.

Notebook use, no Hydra needed::

    from steelseg.predict import Predictor
    from steelseg.io import read_grey

    predictor = Predictor.from_checkpoint("outputs/train/runs/<time>/checkpoints/last.ckpt")
    image = read_grey("data/severstal/train_images/0002cc93b.jpg")  # uint8 (256, 1600)
    prob = predictor.predict_proba(image)                          # float32 (256, 1600)
    mask = predictor.predict(image)                                # bool (256, 1600)
    for p in predictor.predict_files(["a.jpg", "b.jpg"]):          # files, in batches
        p.source.path, p.image, p.prob, p.image_prob

Each image is resized to the size the model was trained at (``hparams.input_size``; without
one, padded to the network's stride), run in batches (with flip test-time augmentation when
asked), and its probability map resized back (bilinear) to the image's own size before
post-processing (:mod:`steelseg.postprocess`).

A binary model (``classes`` 1) gives probabilities ``(H, W)``; a model with one channel per
defect class (``model.classes=4``) gives ``(C, H, W)``, post-processed per class
(:class:`~steelseg.postprocess.ClassPostProcess`). A model with the gate head
(``model.gate=true``) also gives each image's class probabilities ``(C,)``
(``Prediction.image_prob``, ``predict_proba(..., return_image_prob=True)``), which the
post-processing's ``gate`` applies to the masks.

:meth:`Predictor.predict_files` is the one loop over image files: it reads them in batches,
names and skips the unreadable ones, and yields a :class:`Prediction` per image. Prediction,
evaluation, tuning and pseudo-labelling all run through it; :func:`predict_to_folder` is
``steelseg-predict``'s work (masks, overlays, panels, a Kaggle-format CSV).
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from steelseg import draw, rle
from steelseg.io import (
    ImageError,
    atomic_write_text,
    check_out_folder,
    images_in,
    read_grey,
    write_png,
)
from steelseg.postprocess import (
    TTA_CHOICES,
    ClassPostProcess,
    PostProcess,
    check_tta,
    load_tuned,
    postprocess_from_dict,
    sidecar_path,
)
from steelseg.runtime import (
    STRIDE,
    Engine,
    TorchEngine,
    export_runtime,
    load_metadata,
    open_engine,
    sigmoid,
)

#: what turns probabilities into masks: one setting for a binary model (or for every class),
#: or one per class
AnyPostProcess = PostProcess | ClassPostProcess

if TYPE_CHECKING:
    from steelseg.submission import Sample

log = logging.getLogger(__name__)

#: background threads that decode input images, and that post-process and write outputs,
#: while the model runs (OpenCV releases the GIL while it decodes and encodes)
READ_THREADS, WRITE_THREADS = 2, 2

__all__ = [
    "TTA_CHOICES",
    "Prediction",
    "Predictor",
    "Source",
    "apply_postprocess",
    "collect_inputs",
    "read_grey",
]


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Source:
    """One input image: its file, its ImageId (file name) and the labels of its folder."""

    path: Path
    image_id: str
    #: train.csv of a Kaggle-layout folder (images not in it are clean), or the masks/ folder
    #: of a folder layout (masks/<stem>.png; images without one are unlabelled)
    labels: Path | None = None

    @classmethod
    def of(cls, path: str | os.PathLike) -> Source:
        """A file, labelled by the ``train.csv`` beside its folder when that is
        ``train_images/``, or by the ``masks/`` beside it when that is ``images/``."""
        path = Path(path)
        return cls(path, path.name, _kaggle_labels(path.parent))


def _kaggle_labels(folder: Path) -> Path | None:
    """The labels beside a labelled image folder: train.csv beside a Kaggle ``train_images/``,
    or ``masks/`` beside the folder layout's ``images/``; None for any other folder."""
    if folder.name == "train_images":
        csv = folder.parent / "train.csv"
        return csv if csv.is_file() else None
    masks = folder.parent / "masks"
    return masks if folder.name == "images" and masks.is_dir() else None


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Source], list[str]]:
    """Expand image files, folders and globs into image sources.

    A folder holding ``train_images/`` (a Kaggle-layout folder) means its train images, with
    ground truth from its ``train.csv``; one holding ``images/`` and no images of its own (the
    folder layout) means those, with ground truth from its ``masks/``; one holding only
    ``test_images/`` means those. Files in a folder are taken by image suffix; files named or
    matched by a glob are all tried.

    Returns:
        The sources in order (duplicate files once), and the inputs that matched nothing.
    """
    found: list[Source] = []
    empty: list[str] = []
    for text in map(str, inputs):
        path = Path(text)
        if path.is_dir():
            folder = path
            if (path / "train_images").is_dir():
                folder = path / "train_images"
            elif (path / "images").is_dir() and not images_in(path):
                folder = path / "images"
            elif (path / "test_images").is_dir() and not images_in(path):
                folder = path / "test_images"
            new = [Source.of(p) for p in images_in(folder)]
        elif path.is_file():
            new = [Source.of(path)]
        else:
            new = [Source.of(m) for m in sorted(glob.glob(text)) if Path(m).is_file()]
        if not new:
            empty.append(text)
        found.extend(new)
    seen: set[Path] = set()
    unique = []
    for s in found:
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique, empty


# ----------------------------------------------------------------------------- predictor
def _as_images(images: Any) -> tuple[list[np.ndarray], bool]:
    """Normalise the accepted inputs to a list of 2-D grey arrays; also say if one was given."""
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (3, 4)):
            return [_grey(images)], True
        if images.ndim in (3, 4):
            return [_grey(a) for a in images], False
        raise ValueError(
            f"images must be (H, W), (H, W, 3), (N, H, W) or a list of images, got shape "
            f"{images.shape}"
        )
    if type(images).__module__.startswith("torch"):
        raise ValueError("images must be numpy arrays (convert with tensor.cpu().numpy())")
    return [_grey(np.asarray(a)) for a in images], False


def _gathered(
    arrays: list[np.ndarray], single: bool, empty: tuple[int, ...], dtype: Any = np.float32
) -> np.ndarray | list[np.ndarray]:
    """One image's array; several stacked when they share a shape, else the list; none:
    an empty array of shape ``empty``."""
    if single:
        return arrays[0]
    if arrays and len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    return arrays if arrays else np.zeros(empty, dtype)


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] in (3, 4):  # OpenCV's BGR(A), as cv2.imread gives
        image = cv2.cvtColor(
            image, cv2.COLOR_BGRA2GRAY if image.shape[-1] == 4 else cv2.COLOR_BGR2GRAY
        )
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"each image must be (H, W) or (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.float32)  # the model takes 0..255 floats too
    return image


def apply_postprocess(
    postprocess: AnyPostProcess, prob: np.ndarray, image_prob: np.ndarray | None = None
) -> np.ndarray:
    """The masks of one image's probabilities, gated by its image probabilities.

    A plain :class:`PostProcess` acts on every class of a multi-class model
    (:meth:`ClassPostProcess.uniform`).

    Shape:
        prob: (H, W) of a binary model or (C, H, W); image_prob: (C,) or None.
        Returns bool of ``prob``'s shape.
    """
    if prob.ndim == 3:
        if isinstance(postprocess, PostProcess):
            postprocess = ClassPostProcess.uniform(postprocess, len(prob))
        return postprocess.apply(prob, image_prob)
    if isinstance(postprocess, ClassPostProcess):
        (postprocess,) = postprocess.classes  # one class (checked by Predictor)
    return postprocess.apply(prob, None if image_prob is None else float(image_prob[0]))


@dataclass
class Prediction:
    """One image file and its defect probabilities (see :meth:`Predictor.predict_files`).

    Shape:
        image: uint8 (H, W); prob, plain: float32 (H, W) for a binary model, (C, H, W) for a
        model of C classes, at the image's own size; image_prob, plain_image_prob: float32
        (C,) for a model with the gate head, else None.
    """

    source: Source
    image: np.ndarray
    prob: np.ndarray
    plain: np.ndarray | None = None  # without test-time augmentation, when asked for
    image_prob: np.ndarray | None = None  # the gate head's, averaged over the flips like prob
    plain_image_prob: np.ndarray | None = None  # without test-time augmentation

    def mask(self, postprocess: AnyPostProcess) -> np.ndarray:
        """The post-processed masks, gated by :attr:`image_prob`: bool, shaped as ``prob``."""
        return apply_postprocess(postprocess, self.prob, self.image_prob)

    def defect_mask(self, postprocess: AnyPostProcess) -> np.ndarray:
        """Where a defect of any class is: bool (H, W) (the mask itself for a binary model)."""
        mask = self.mask(postprocess)
        return mask.any(axis=0) if mask.ndim == 3 else mask


def log_skip(source: Source, reason: str) -> None:
    """The default report of a skipped input: a warning ``skipped <file>: <reason>``."""
    log.warning("skipped %s: %s", source.path, reason)


class Skipped(list):
    """The inputs :meth:`Predictor.predict_files` skipped: ``(source, reason)`` pairs.

    Pass it as ``on_skip``; it records each skip and tells ``report`` (default: a warning).
    """

    def __init__(self, report: Callable[[Source, str], None] = log_skip) -> None:
        super().__init__()
        self.report = report

    def __call__(self, source: Source, reason: str) -> None:
        self.append((source, reason))
        self.report(source, reason)

    def by_path(self) -> dict[str, str]:
        """``{file: reason}`` (predict.json, pseudo.json)."""
        return {str(s.path): reason for s, reason in self}

    def by_id(self) -> list[dict[str, str]]:
        """``[{"image_id": ..., "reason": ...}]`` (eval.json, the tuned sidecar)."""
        return [{"image_id": s.image_id, "reason": reason} for s, reason in self]


def _model_outputs(engine: Engine, classes: int | None, gated: bool | None) -> tuple[int, bool]:
    """The (classes, gated) of a model: as given, else what the engine says, else binary and
    ungated; one line when the given and the engine's differ."""
    for name, given, own in (("classes", classes, engine.classes), ("gated", gated, engine.gated)):
        if given is not None and own is not None and given != own:
            raise ValueError(
                f"the model's metadata says {name}={given}, but the model file has {own}; "
                "export it again (steelseg-export)"
            )
    classes = classes if classes is not None else engine.classes
    gated = gated if gated is not None else engine.gated
    classes = 1 if classes is None else int(classes)
    if classes < 1:
        raise ValueError(f"classes must be >= 1, got {classes}")
    return classes, bool(gated)


class Predictor:
    """A trained model on a runtime, with its input size, post-processing and test-time flips.

    Args:
        model: A trained :class:`~steelseg.model.SteelSegModule` (runs on PyTorch), or an
            :class:`~steelseg.runtime.Engine` (an exported file on ONNX Runtime, OpenVINO or
            TorchScript; see :meth:`from_export`).
        device: For a module: where to run; None: CUDA when available, else CPU.
        postprocess: How probabilities become masks; None: a threshold at the model's. For a
            model of several classes a plain :class:`PostProcess` acts on every class
            (stored as :meth:`ClassPostProcess.uniform`).
        tta: Flips to average with the plain prediction, from :data:`TTA_CHOICES`.
        batch_size: Images per forward pass.
        precision: For a module: ``fp32`` or ``bf16`` (autocast); None: bf16 on a CUDA GPU that
            supports it (as training does), fp32 elsewhere. Probabilities are always float32.
        input_size: The (H, W) images are resized to; None: the module's trained size.
        threshold: The model's own threshold; None: the module's.
        classes: The model's mask channels; None: the module's (``model.classes``), else what
            the engine's graph says, else 1.
        gated: Whether the model has the gate head; None: the module's (``model.gate``), else
            what the engine's graph says, else False.

    Attributes:
        classes: Mask channels: 1 (binary: probabilities (H, W)) or C (probabilities
            (C, H, W), one per defect class).
        gated: Whether the model gives image probabilities (C,) (the gate head).
    """

    def __init__(
        self,
        model: Any,
        device: Any = None,
        postprocess: PostProcess | None = None,
        tta: Sequence[str] = (),
        batch_size: int = 8,
        precision: str | None = None,
        input_size: Sequence[int] | None = None,
        threshold: float | None = None,
        classes: int | None = None,
        gated: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(model, Engine):
            self.engine, self.module = model, None
        else:
            self.engine = TorchEngine(model, device, precision)
            self.module = self.engine.module
            hp = getattr(model, "hparams", {})
            input_size = input_size if input_size is not None else hp.get("input_size")
            threshold = threshold if threshold is not None else hp.get("threshold")
        self.classes, self.gated = _model_outputs(self.engine, classes, gated)
        fixed = self.engine.fixed_size
        if input_size is not None and fixed is not None and tuple(input_size) != fixed:
            raise ValueError(
                f"the model takes {fixed[1]}x{fixed[0]} images only, not the input size "
                f"{input_size[1]}x{input_size[0]} its metadata names"
            )
        size = input_size if input_size is not None else fixed
        self.input_size: tuple[int, int] | None = tuple(int(v) for v in size) if size else None
        #: the model's own threshold (what training scored at)
        self.model_threshold = float(threshold) if threshold is not None else 0.5
        self.postprocess = self.check_postprocess(
            postprocess or PostProcess(threshold=self.model_threshold)
        )
        self.tta = check_tta(tta)
        self.batch_size = int(batch_size)
        self.model_file: Path | None = None  # the .ckpt or exported file it came from, if any
        self.checkpoint: Path | None = None  # the checkpoint behind it (an export's source)
        self.tuned_sidecar: Path | None = None  # the steelseg-tune values it started from
        self.metadata: dict[str, Any] | None = None  # an export's <file>.json
        #: how ``--runtime auto`` chose this runtime (steelseg.deploy.choose_runtime), or None
        self.choice: dict[str, Any] | None = None

    @property
    def device(self) -> str:
        """Where the model runs (``cpu``, ``cuda:0``)."""
        return self.engine.device

    @property
    def runtime(self) -> str:
        return self.engine.runtime

    @property
    def precision(self) -> str:
        return self.engine.precision

    def describe(self) -> str:
        """``<runtime> <precision> on <device>``."""
        return self.engine.describe()

    def check_postprocess(self, postprocess: AnyPostProcess) -> AnyPostProcess:
        """``postprocess`` in the form this model's masks take: a :class:`PostProcess` for a
        binary model, a :class:`ClassPostProcess` of its classes otherwise.

        Raises:
            ValueError: a gate on a model without the gate head, or settings for another
                number of classes.
        """
        per_class = (
            postprocess.classes if isinstance(postprocess, ClassPostProcess) else (postprocess,)
        )
        if not self.gated and any(p.gate != "none" for p in per_class):
            raise ValueError(
                "postprocess gate needs a model with the gate head (model.gate=true); this "
                "model has none: set gate to none"
            )
        if isinstance(postprocess, PostProcess):
            return (
                postprocess
                if self.classes == 1
                else ClassPostProcess.uniform(postprocess, self.classes)
            )
        if postprocess.n_classes != self.classes:
            raise ValueError(
                f"the post-processing has settings for {postprocess.n_classes} classes, but "
                f"the model predicts {self.classes}; tune it for this model (steelseg-tune)"
            )
        return postprocess.classes[0] if self.classes == 1 else postprocess

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        device: Any = None,
        postprocess: PostProcess | None = None,
        tta: Sequence[str] | None = None,
        batch_size: int = 8,
        use_tuned: bool = True,
        trust_checkpoint: bool = False,
        precision: str | None = None,
    ) -> Predictor:
        """Load a checkpoint once, on PyTorch; post-processing and TTA default to the tuned ones.

        ``postprocess`` / ``tta`` left None take the values ``steelseg-tune`` stored beside the
        checkpoint (:func:`steelseg.postprocess.load_tuned`) when present and ``use_tuned``;
        otherwise a threshold at the module's and no TTA. ``trust_checkpoint`` allows
        checkpoints that need full (code-running) unpickling; see
        :meth:`SteelSegModule.load_from_checkpoint`. Other runtimes run exports
        (:meth:`from_export`; :func:`steelseg.export.load_predictor` makes them on demand).
        """
        from steelseg.model import SteelSegModule

        tuned = load_tuned(checkpoint) if use_tuned else None  # a bad sidecar fails first
        module = SteelSegModule.load_from_checkpoint(checkpoint, weights_only=not trust_checkpoint)
        if postprocess is None and tuned is not None:
            postprocess = tuned[0]
        if tta is None:
            tta = tuned[1] if tuned is not None else ()
        predictor = cls(module, device, postprocess, tta, batch_size, precision)
        predictor.model_file = predictor.checkpoint = Path(checkpoint)
        if tuned is not None:
            predictor.tuned_sidecar = sidecar_path(checkpoint)
        return predictor

    @classmethod
    def from_export(
        cls,
        path: str | os.PathLike,
        runtime: str | None = None,
        precision: str | None = None,
        postprocess: PostProcess | None = None,
        tta: Sequence[str] | None = None,
        batch_size: int = 8,
        use_tuned: bool = True,
        threads: int = 0,
    ) -> Predictor:
        """Run a file written by ``steelseg-export`` (no PyTorch needed for ONNX or OpenVINO).

        Args:
            path: The ``.onnx``, ``.xml`` (OpenVINO) or ``.pt`` (TorchScript) file; its
                ``<file>.json`` gives the input size, threshold, classes, gate head and
                post-processing.
            runtime: None: the export's checked default when installed, else the first
                installed runtime that runs the format.
            precision: None: the export's checked default for that runtime, else the file's
                own (``int8`` for a quantized file, ``fp32`` otherwise).
            postprocess, tta: None: a ``steelseg-tune`` sidecar beside the file, else the
                metadata's.
            threads: CPU threads of the runtime (0: its default, every core).
        """
        meta = load_metadata(path)
        runtime, precision = export_runtime(path, meta, runtime, precision)
        engine = open_engine(path, runtime, precision, threads)
        tuned = load_tuned(path) if use_tuned else None
        if tuned is None and use_tuned:
            tuned = (postprocess_from_dict(meta["postprocess"]), check_tta(meta.get("tta", [])))
        if postprocess is None and tuned is not None:
            postprocess = tuned[0]
        if tta is None:
            tta = tuned[1] if tuned is not None else ()
        predictor = cls(
            engine,
            postprocess=postprocess,
            tta=tta,
            batch_size=batch_size,
            input_size=meta.get("input_size"),
            threshold=meta.get("model_threshold", meta.get("threshold")),
            classes=meta.get("classes", 1),  # exports from before per-class models: binary
            gated=meta.get("gated", False),
        )
        predictor.model_file = Path(path)
        predictor.metadata = meta
        source = meta.get("checkpoint")
        predictor.checkpoint = Path(source) if source else None
        if use_tuned and sidecar_path(path).is_file():
            predictor.tuned_sidecar = sidecar_path(path)
        return predictor

    # ------------------------------------------------------------------ arrays
    def network_input(self, image: np.ndarray) -> np.ndarray:
        """A grey (H, W) image as the network takes it: resized to the trained input size, or
        padded to the network's stride when there is none."""
        h, w = image.shape
        if self.input_size is not None:
            th, tw = self.input_size
            if (h, w) == (th, tw):
                return image
            # INTER_AREA, as the training cache was made (steelseg.prepare.load_sample)
            return cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
        ph, pw = -h % STRIDE, -w % STRIDE  # no trained size: pad to the network's stride
        return (
            cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REFLECT_101) if ph or pw else image
        )

    def _back(self, prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """(C, h, w) network-size probabilities -> (C, H, W) at the image's own size."""
        h, w = shape
        if self.input_size is None:
            return np.ascontiguousarray(prob[:, :h, :w])
        if prob.shape[1:] == (h, w):
            return prob
        return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in prob])

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Sigmoid of the engine's outputs: mask (N, C, h, w) and image (N, C) or None."""
        masks, image = self.engine(np.ascontiguousarray(x))
        if masks.ndim != 4 or masks.shape[1] != self.classes or (image is None) == self.gated:
            got = f"{masks.shape}" + ("" if image is None else f" and {image.shape}")
            raise ValueError(
                f"the model gave outputs of shape {got}, not the {self.classes}-class mask "
                f"logits{' and image logits' if self.gated else ''} its metadata names"
            )
        return sigmoid(masks), None if image is None else sigmoid(image)

    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """TTA-averaged and plain probabilities of a (N, h, w) batch at network size: masks
        (N, C, h, w) each, and image probabilities (N, C) each (None without the gate head)."""
        x = batch[:, None]  # (N, 1, h, w)
        want = self.engine.input_dtype
        if want is not None and x.dtype != want:
            x = np.rint(x).astype(want) if want == np.uint8 else x.astype(want)
        plain, plain_image = self._run(x)
        prob = plain.copy() if self.tta else plain
        image = plain_image.copy() if self.tta and plain_image is not None else plain_image
        for name in self.tta:
            axis = -1 if name == "hflip" else -2
            flipped_prob, flipped_image = self._run(np.flip(x, axis))
            prob += np.flip(flipped_prob, axis)  # every class channel flips back alike
            if image is not None:
                image += flipped_image  # a flip shows the same defects: averaged as they are
        if self.tta:
            prob /= 1 + len(self.tta)
            if image is not None:
                image /= 1 + len(self.tta)
        return prob, plain, image, plain_image

    def _proba(self, grey: list[np.ndarray], with_plain: bool) -> list[tuple[Any, ...]]:
        """(probabilities, plain probabilities or None, image probabilities or None, plain
        image probabilities or None) of each image; probabilities at its own size, (H, W)
        for a binary model, (C, H, W) otherwise."""
        net = [self.network_input(g) for g in grey]
        out: list[Any] = [None] * len(grey)
        by_shape: dict[tuple[tuple[int, int], np.dtype], list[int]] = {}
        for i, a in enumerate(net):
            by_shape.setdefault((a.shape, a.dtype), []).append(i)
        binary = self.classes == 1

        def back(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
            prob = self._back(prob, shape)
            return prob[0] if binary else prob

        for idx in by_shape.values():
            for lo in range(0, len(idx), self.batch_size):
                part = idx[lo : lo + self.batch_size]
                probs, plains, images, plain_images = self._forward(
                    np.stack([net[i] for i in part])
                )
                for j, i in enumerate(part):
                    shape = grey[i].shape
                    out[i] = (
                        back(probs[j], shape),
                        back(plains[j], shape) if with_plain else None,
                        None if images is None else images[j],
                        None if plain_images is None or not with_plain else plain_images[j],
                    )
        return out

    def predict_proba(self, images: Any, return_image_prob: bool = False) -> Any:
        """Defect probabilities of each pixel, at each image's own size.

        Args:
            images: One uint8 grey (H, W) or BGR (H, W, 3) image, a sequence of them, or an
                (N, H, W) array.
            return_image_prob: Also return the gate head's image probabilities (None for a
                model without it).

        Returns:
            float32 (H, W) for one image; (N, H, W) for several of one size; a list of
            (H, W) arrays for several sizes. For a model of C > 1 classes each (H, W) is
            (C, H, W). With ``return_image_prob``, a pair: that, and float32 (C,) for one
            image, (N, C) for several (or None).
        """
        grey, single = _as_images(images)
        outs = self._proba(grey, with_plain=False)
        empty = (0, 0, 0) if self.classes == 1 else (0, self.classes, 0, 0)
        probs = _gathered([o[0] for o in outs], single, empty)
        if not return_image_prob:
            return probs
        if not self.gated:
            return probs, None
        return probs, _gathered([o[2] for o in outs], single, (0, self.classes))

    def predict(
        self, images: Any, postprocess: AnyPostProcess | None = None
    ) -> np.ndarray | list[np.ndarray]:
        """Defect masks (bool), shaped as :meth:`predict_proba`'s output: per class for a
        model of several classes, gated by the image probabilities when the
        post-processing says so.

        Args:
            images: As for :meth:`predict_proba`.
            postprocess: Overrides this predictor's post-processing for this call.
        """
        pp = self.postprocess if postprocess is None else self.check_postprocess(postprocess)
        grey, single = _as_images(images)
        masks = [apply_postprocess(pp, o[0], o[2]) for o in self._proba(grey, with_plain=False)]
        return _gathered(masks, single, (0, 0, 0), bool)

    # ------------------------------------------------------------------ files
    def predict_files(
        self,
        sources: Iterable[Source | str | os.PathLike],
        shape: tuple[int, int] | None = None,
        check: Callable[[Source, np.ndarray], None] | None = None,
        on_skip: Callable[[Source, str], None] = log_skip,
        with_plain: bool = False,
        progress: bool | None = False,
        desc: str = "predict",
    ) -> Iterator[Prediction]:
        """Read image files in batches and predict them; the unreadable ones are skipped.

        Args:
            sources: Image files (paths or :class:`Source`).
            shape: The (height, width) every image must have (e.g. to match its mask), or None.
            check: More conditions on a read image: raises ``ValueError`` to skip it.
            on_skip: Told each skipped source and why (default: a logged warning).
            with_plain: Also give the probabilities (and image probabilities) without TTA
                (free: the plain pass is part of the TTA average).
            progress: A progress bar: True, False, or None (only on a terminal).
            desc: The progress bar's label.

        Yields:
            One :class:`Prediction` per readable image, in order.
        """
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        sources = [s if isinstance(s, Source) else Source.of(s) for s in sources]
        bar = tqdm(
            total=len(sources),
            desc=desc,
            unit="img",
            disable=None if progress is None else not progress,
        )

        def read(s: Source) -> tuple[np.ndarray | None, str]:
            """Decode one file (in a reader thread: OpenCV releases the GIL)."""
            try:
                image = read_grey(s.path)
            except ImageError as e:
                return None, e.reason
            if shape is not None and image.shape != tuple(shape):
                return None, (
                    f"it is {image.shape[1]}x{image.shape[0]}, but this needs "
                    f"{shape[1]}x{shape[0]} images"
                )
            return image, ""

        # the next batches decode in background threads while the model runs on this one
        ahead = 2 * self.batch_size
        pending: deque = deque()
        todo = iter(sources)
        with (
            ThreadPoolExecutor(READ_THREADS, "steelseg-read") as pool,
            bar,
            logging_redirect_tqdm(),
        ):
            for s in itertools.islice(todo, ahead):
                pending.append((s, pool.submit(read, s)))
            while pending:
                batch = [pending.popleft() for _ in range(min(self.batch_size, len(pending)))]
                for s in itertools.islice(todo, len(batch)):
                    pending.append((s, pool.submit(read, s)))
                good, images = [], []
                for s, future in batch:
                    image, reason = future.result()
                    if image is not None and check is not None:
                        try:
                            check(s, image)
                        except ValueError as e:
                            image, reason = None, str(e)
                    if image is None:
                        on_skip(s, reason)
                        continue
                    good.append(s)
                    images.append(image)
                outs = self._proba(images, with_plain)
                for s, image, (prob, plain, image_prob, plain_image_prob) in zip(
                    good, images, outs
                ):
                    yield Prediction(s, image, prob, plain, image_prob, plain_image_prob)
                bar.update(len(batch))


# ----------------------------------------------------------------------------- to a folder
class _Truth:
    """Ground-truth masks of labelled inputs: from the train.csv of a Kaggle-layout folder
    (read once each) or from the ``masks/<stem>.png`` of a folder layout (read per image)."""

    def __init__(self, sources: Sequence[Source]) -> None:
        """Read (and validate) every train.csv first, so a bad one stops the run early."""
        self.tables = {
            csv: rle.read_annotations(csv, any_class=True)
            for csv in dict.fromkeys(s.labels for s in sources if s.labels is not None)
            if not csv.is_dir()
        }

    def mask(self, source: Source, shape: tuple[int, int]) -> np.ndarray | None:
        """The merged defect mask, bool (H, W) of ``shape``, or None when not known."""
        if source.labels is None:
            return None
        if source.labels in self.tables:
            if shape != rle.SHAPE:
                return None  # the RLE of train.csv is at 256x1600
            return rle.image_mask(self.tables[source.labels], source.image_id).astype(bool)
        from steelseg.prepare import read_mask  # the folder layout's masks/

        path = source.labels / f"{Path(source.image_id).stem}.png"
        if not path.is_file():
            return None  # an image without its mask is unlabelled, not clean
        try:
            mask = read_mask(path)
        except ValueError as e:
            log.warning("no ground truth for %s: %s", source.path, e)
            return None
        if mask.shape != tuple(shape):
            log.warning(
                "no ground truth for %s: its mask %s is %dx%d, the image %dx%d",
                source.path,
                path,
                mask.shape[1],
                mask.shape[0],
                shape[1],
                shape[0],
            )
            return None
        return mask > 0


def predict_to_folder(
    predictor: Predictor,
    sources: Sequence[Source],
    out: str | os.PathLike,
    postprocess: AnyPostProcess | None = None,
    masks_only: bool = False,
    on_skip: Callable[[Source, str], None] = log_skip,
    progress: bool | None = None,
    unmatched: Sequence[str] = (),
    sample: Sample | None = None,
) -> dict[str, Any]:
    """Predict image files into ``out``: ``steelseg-predict``'s work.

    Writes ``masks/<stem>.png``, ``overlays/<stem>.png``, ``panels/<stem>.png`` (the reference
    demo's four panels, where ground truth is known: a Kaggle-layout folder or its
    ``train_images/`` with train.csv beside it), ``predictions.csv`` (``ImageId,ClassId,
    EncodedPixels``), ``predict.json`` (settings, counts, speed, skipped inputs) and, given
    a ``sample``, ``submission.csv``.

    * A binary model: masks 0/255; overlays with the prediction red (with ground truth: found
      green, false alarm red, missed blue); one CSV row per image, ClassId 0 (any defect
      class), EncodedPixels empty for no defect.
    * A model of C > 1 classes: masks hold the class id of each pixel (0: no defect; where
      classes overlap, the most probable); overlays tint each class in its
      :data:`steelseg.draw.CLASS_RGB` colour; panels compare the defects of any class with
      the ground truth; CSV rows: one per (image, class) with a defect, ClassId 1..C, and
      one row ClassId 0 with empty EncodedPixels for an image without any.

    Args:
        predictor: The model.
        sources: The images (:func:`collect_inputs` expands files, folders and globs).
        out: The output folder.
        postprocess: Replaces the predictor's post-processing.
        masks_only: Write masks and the CSV only.
        on_skip: Told each skipped input and why.
        progress: A progress bar (None: on a terminal).
        unmatched: Inputs that named no image (recorded as skipped).
        sample: A Kaggle ``sample_submission.csv`` (:func:`steelseg.submission.read_sample`)
            whose every image is among ``sources``: also write ``submission.csv`` in its
            layout (an image of it that is skipped gets empty rows, and is named), and check
            it as Kaggle would (``submission`` in the returned summary).

    Returns:
        The content of ``predict.json``; its ``skipped`` maps each skipped input to the reason.

    Raises:
        ValueError: no sources, ``out`` cannot be a folder, a post-processing this model
            cannot take, or a ``sample`` this model or these sources cannot answer (checked
            before any image is predicted).
    """
    out = Path(out)
    if not sources:
        raise ValueError("no input images found")
    check_out_folder(out)
    if sample is not None:
        check_submission(sample, predictor.classes, sources)
    skipped = Skipped(on_skip)
    for text in unmatched:
        skipped.append((Source(Path(text), text), "no image file matches it"))
    pp = predictor.postprocess if postprocess is None else predictor.check_postprocess(postprocess)
    binary = predictor.classes == 1
    truth = _Truth(sources)
    stems: dict[str, Path] = {}
    in_sample = set(sample.image_ids) if sample is not None else set()

    def check(s: Source, image: np.ndarray) -> None:
        if s.image_id in in_sample and image.shape != rle.SHAPE:
            raise ValueError(
                f"it is {image.shape[1]}x{image.shape[0]}; a Kaggle submission needs "
                f"{rle.SHAPE[1]}x{rle.SHAPE[0]} images"
            )
        stem = Path(s.image_id).stem
        if stem in stems:
            raise ValueError(
                f"same name as {stems[stem]} (outputs would collide); predict the two folders "
                "into different --out folders"
            )
        stems[stem] = s.path

    def save(p: Prediction) -> _Saved:
        """Post-process one prediction and write its pictures (in a writer thread)."""
        image_id, stem = p.source.image_id, Path(p.source.image_id).stem
        mask = p.mask(pp)  # (H, W), or (C, H, W) per class
        if binary:
            write_png(out / "masks" / f"{stem}.png", mask.astype(np.uint8) * 255)
            encoded = [rle.encode(mask)]
            rows = [(image_id, rle.ANY_CLASS, encoded[0])]
        else:
            classes = class_map(mask, p.prob)
            write_png(out / "masks" / f"{stem}.png", classes)
            encoded = [rle.encode(m) for m in mask]
            rows = [(image_id, c, e) for c, e in enumerate(encoded, 1) if e]
            rows = rows or [(image_id, rle.ANY_CLASS, "")]
        saved = _Saved(image_id, rows, encoded if image_id in in_sample else None)
        if masks_only:
            return saved
        gt = truth.mask(p.source, p.image.shape)
        if binary:
            empty_truth = np.zeros_like(mask) if gt is None else gt
            picture = draw.overlay(p.image, mask, empty_truth)
        else:
            picture = draw.class_overlay(p.image, classes)
        write_png(out / "overlays" / f"{stem}.png", draw.to_bgr(picture))
        if gt is None:
            return saved
        from steelseg import metric  # ground truth: a labelled folder (needs torch)

        defect = mask if binary else mask.any(axis=0)  # panels compare defects of any class
        dice = float(metric.dice_per_image(*metric.mask_counts(defect, gt)))
        panel = draw.four_panel(p.image, defect, gt, image_id, dice)
        write_png(out / "panels" / f"{stem}.png", draw.to_bgr(panel))
        saved.panel = True
        return saved

    # post-processing and PNG writing run in background threads while the model runs on
    # (in order; at most a few batches wait, so memory stays flat)
    saved: list[_Saved] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(WRITE_THREADS, "steelseg-write") as pool:
        waiting: deque = deque()
        for p in predictor.predict_files(sources, check=check, on_skip=skipped, progress=progress):
            waiting.append(pool.submit(save, p))
            while len(waiting) > 2 * predictor.batch_size:
                saved.append(waiting.popleft().result())
        saved.extend(f.result() for f in waiting)
    seconds = time.perf_counter() - start
    _write_csv(out / "predictions.csv", [row for s in saved for row in s.rows])
    summary = {
        "checkpoint": str(predictor.checkpoint) if predictor.checkpoint else None,
        "model_file": str(predictor.model_file) if predictor.model_file else None,
        "runtime": predictor.runtime,
        "precision": predictor.precision,
        "device": str(predictor.device),
        "input_size": predictor.input_size,
        "classes": predictor.classes,
        "gated": predictor.gated,
        "postprocess": pp.to_dict(),
        "tta": list(predictor.tta),
        "images": len(saved),
        "with_defect": sum(1 for s in saved if any(e for _, _, e in s.rows)),
        "panels": sum(s.panel for s in saved),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(saved) / seconds, 3) if seconds > 0 else None,
        "skipped": skipped.by_path(),
        "submission": None,
    }
    if not binary:
        summary["with_defect_by_class"] = {
            str(c): sum(1 for s in saved if any(row[1] == c for row in s.rows))
            for c in range(1, predictor.classes + 1)
        }
    if sample is not None:
        summary["submission"] = _write_submission(out / "submission.csv", sample, saved)
    atomic_write_text(out / "predict.json", json.dumps(summary, indent=2) + "\n")
    return summary


@dataclass
class _Saved:
    """What predict_to_folder keeps of one image: its CSV rows, the RLE of each class (for
    the submission) and whether it has a panel."""

    image_id: str
    rows: list[tuple[str, int, str]]
    class_rles: list[str] | None = None  # only for the images of a submission's sample
    panel: bool = False


def class_map(masks: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The class id of each pixel: 0 where no class is predicted, else the most probable of
    the classes predicted there (multi-label masks may overlap).

    Shape:
        masks: bool (C, H, W); prob: (C, H, W). Returns uint8 (H, W), values 0..C.
    """
    ids = np.argmax(np.where(masks, prob, -1.0), axis=0).astype(np.uint8) + 1
    ids[~masks.any(axis=0)] = 0
    return ids


def _write_csv(path: Path, rows: Sequence[tuple[str, int, str]]) -> None:
    """``ImageId,ClassId,EncodedPixels`` rows (see :func:`predict_to_folder`)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
    atomic_write_text(path, df.to_csv(index=False))


# ----------------------------------------------------------------------------- submissions
def find_sample(inputs: Sequence[str | os.PathLike], sources: Sequence[Source]) -> Path | None:
    """The Kaggle ``sample_submission.csv`` that goes with the predicted images, if any: the
    one beside ``test_images/`` when an input is a folder holding ``test_images/`` (or is
    ``test_images/`` itself) and the images predicted are those test images."""
    for text in inputs:
        folder = Path(text)
        if not folder.is_dir():
            continue
        root = folder if (folder / "test_images").is_dir() else folder.parent
        csv, test_dir = root / "sample_submission.csv", (root / "test_images").resolve()
        if csv.is_file() and any(s.path.parent.resolve() == test_dir for s in sources):
            return csv
    return None


def check_submission(sample: Sample, classes: int, sources: Sequence[Source]) -> None:
    """Check, before anything is predicted, that a model of ``classes`` classes predicting
    ``sources`` can answer ``sample``.

    Raises:
        ValueError: the model is not of the 4 Severstal classes, or the sample names images
            that are not among the sources (:func:`steelseg.submission.check_images` when
            they come from one folder).
    """
    from steelseg import submission

    if classes != submission.N_CLASSES:
        raise ValueError(
            f"a Kaggle submission needs {submission.N_CLASSES} defect classes, but the model "
            f"predicts {classes}; train with model.classes={submission.N_CLASSES}"
        )
    have = {s.image_id for s in sources}
    extra = sorted(have - set(sample.image_ids))
    if extra:  # Kaggle's sample names every test image; a partial one leaves these out
        log.warning(
            "%s does not name %d predicted image(s) (%s%s); they get masks but no rows in "
            "submission.csv",
            sample.path.name,
            len(extra),
            ", ".join(extra[:5]),
            " ..." if len(extra) > 5 else "",
        )
    folders = {s.path.parent for s in sources}
    if len(folders) == 1:
        submission.check_images(sample, folders.pop())
        return
    missing = [i for i in sample.image_ids if i not in have]
    if missing:
        raise ValueError(
            f"{sample.path.name} names {len(missing)} image(s) not among the inputs: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; is it the sample "
            "of these images?"
        )


class _RleMasks(Mapping):
    """ImageId -> uint8 (4, H, W) masks decoded from their RLE when asked for (an image
    without any: empty masks). The arrays are zero-allocated and only the runs are written,
    so the untouched pages of the whole test set's masks cost no memory."""

    def __init__(self, rles: Mapping[str, Sequence[str]], image_ids: Sequence[str]) -> None:
        self.rles, self.image_ids = rles, image_ids

    def __getitem__(self, image_id: str) -> np.ndarray:
        if image_id not in self.rles and image_id not in self.image_ids:
            raise KeyError(image_id)
        h, w = rle.SHAPE
        masks = np.zeros((rle.N_CLASSES, w, h), np.uint8)  # column-major, as runs count
        for c, encoded in enumerate(self.rles.get(image_id, ())):
            flat = masks[c].reshape(-1)
            for lo, hi in rle.parse(encoded).tolist():
                flat[lo:hi] = 1
        return masks.transpose(0, 2, 1)

    def __iter__(self) -> Iterator[str]:
        return iter(self.image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)


def _write_submission(path: Path, sample: Sample, saved: Sequence[_Saved]) -> dict[str, Any]:
    """Write ``submission.csv`` in the sample's layout and check it; its summary."""
    from steelseg import submission

    rles = {s.image_id: s.class_rles for s in saved if s.class_rles is not None}
    left_empty = [i for i in sample.image_ids if i not in rles]  # skipped (named already)
    submission.write(path, sample, _RleMasks(rles, sample.image_ids))
    checked = submission.check(path, sample)
    return {"file": path.name, "sample": str(sample.path), **checked, "left_empty": left_empty}
