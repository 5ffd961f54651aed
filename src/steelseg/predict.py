"""Inference: a trained checkpoint applied to numpy images or image files.

Notebook use, no Hydra needed::

    from steelseg.predict import Predictor
    from steelseg.io import read_grey

    predictor = Predictor.from_checkpoint("outputs/train/runs/<time>/checkpoints/last.ckpt")
    image = read_grey("data/severstal/train_images/0002cc93b.jpg")  # uint8 (256, 1600)
    prob = predictor.predict_proba(image)                          # float32 (256, 1600)
    mask = predictor.predict(image)                                # bool (256, 1600)
    for p in predictor.predict_files(["a.jpg", "b.jpg"]):          # files, in batches
        p.source.path, p.image, p.prob

Each image is resized to the size the model was trained at (``hparams.input_size``), run in
batches (with flip test-time augmentation when asked), and its probability map resized back
(bilinear) to the image's own size before post-processing (:mod:`steelseg.postprocess`).

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from steelseg.postprocess import TTA_CHOICES, PostProcess, check_tta, load_tuned, sidecar_path
from steelseg.runtime import (
    STRIDE,
    Engine,
    TorchEngine,
    export_runtime,
    load_metadata,
    open_engine,
    sigmoid,
)

log = logging.getLogger(__name__)

#: background threads that decode input images, and that post-process and write outputs,
#: while the model runs (OpenCV releases the GIL while it decodes and encodes)
READ_THREADS, WRITE_THREADS = 2, 2

__all__ = ["TTA_CHOICES", "Prediction", "Predictor", "Source", "collect_inputs", "read_grey"]


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


@dataclass
class Prediction:
    """One image file and its defect probabilities (see :meth:`Predictor.predict_files`).

    Shape:
        image: uint8 (H, W); prob, plain: float32 (H, W), at the image's own size.
    """

    source: Source
    image: np.ndarray
    prob: np.ndarray
    plain: np.ndarray | None = None  # without test-time augmentation, when asked for


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


class Predictor:
    """A trained model on a runtime, with its input size, post-processing and test-time flips.

    Args:
        model: A trained :class:`~steelseg.model.SteelSegModule` (runs on PyTorch), or an
            :class:`~steelseg.runtime.Engine` (an exported file on ONNX Runtime, OpenVINO or
            TorchScript; see :meth:`from_export`).
        device: For a module: where to run; None: CUDA when available, else CPU.
        postprocess: How probabilities become masks; None: a threshold at the model's.
        tta: Flips to average with the plain prediction, from :data:`TTA_CHOICES`.
        batch_size: Images per forward pass.
        precision: For a module: ``fp32`` or ``bf16`` (autocast); None: bf16 on a CUDA GPU that
            supports it (as training does), fp32 elsewhere. Probabilities are always float32.
        input_size: The (H, W) images are resized to; None: the module's trained size.
        threshold: The model's own threshold; None: the module's.
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
        self.postprocess = postprocess or PostProcess(threshold=self.model_threshold)
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
                ``<file>.json`` gives the input size, threshold and post-processing.
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
            tuned = (PostProcess.from_dict(meta["postprocess"]), check_tta(meta.get("tta", [])))
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
        h, w = shape
        if self.input_size is None:
            return np.ascontiguousarray(prob[:h, :w])
        if prob.shape == (h, w):
            return prob
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)

    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TTA-averaged and plain probabilities of a (N, h, w) batch at network size."""
        x = batch[:, None]  # (N, 1, h, w)
        want = self.engine.input_dtype
        if want is not None and x.dtype != want:
            x = np.rint(x).astype(want) if want == np.uint8 else x.astype(want)
        plain = sigmoid(self.engine(np.ascontiguousarray(x)))
        prob = plain.copy() if self.tta else plain
        for name in self.tta:
            axis = -1 if name == "hflip" else -2
            flipped = np.ascontiguousarray(np.flip(x, axis))
            prob += np.flip(sigmoid(self.engine(flipped)), axis)
        if self.tta:
            prob /= 1 + len(self.tta)
        return prob[:, 0], plain[:, 0]  # (N, h, w) each

    def _proba(self, grey: list[np.ndarray], with_plain: bool) -> list[tuple[np.ndarray, Any]]:
        """(probabilities, plain probabilities or None) of each image, at its own size."""
        net = [self.network_input(g) for g in grey]
        out: list[Any] = [None] * len(grey)
        by_shape: dict[tuple[tuple[int, int], np.dtype], list[int]] = {}
        for i, a in enumerate(net):
            by_shape.setdefault((a.shape, a.dtype), []).append(i)
        for idx in by_shape.values():
            for lo in range(0, len(idx), self.batch_size):
                part = idx[lo : lo + self.batch_size]
                probs, plains = self._forward(np.stack([net[i] for i in part]))
                for i, p, q in zip(part, probs, plains):
                    shape = grey[i].shape
                    out[i] = (self._back(p, shape), self._back(q, shape) if with_plain else None)
        return out

    def predict_proba(self, images: Any) -> np.ndarray | list[np.ndarray]:
        """Defect probabilities of each pixel, at each image's own size.

        Args:
            images: One uint8 grey (H, W) or BGR (H, W, 3) image, a sequence of them, or an
                (N, H, W) array.

        Returns:
            float32 (H, W) for one image; (N, H, W) for several of one size; a list of
            (H, W) arrays for several sizes.
        """
        grey, single = _as_images(images)
        out = [p for p, _ in self._proba(grey, with_plain=False)]
        if single:
            return out[0]
        if out and len({p.shape for p in out}) == 1:
            return np.stack(out)
        return out if out else np.zeros((0, 0, 0), np.float32)

    def predict(
        self, images: Any, postprocess: PostProcess | None = None
    ) -> np.ndarray | list[np.ndarray]:
        """Binary defect masks, shaped as :meth:`predict_proba`'s output (bool).

        Args:
            images: As for :meth:`predict_proba`.
            postprocess: Overrides this predictor's post-processing for this call.
        """
        pp = postprocess or self.postprocess
        probs = self.predict_proba(images)
        return [pp.apply(p) for p in probs] if isinstance(probs, list) else pp.apply(probs)

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
            with_plain: Also give the probabilities without TTA (free: the plain pass is
                part of the TTA average).
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
                probs = self._proba(images, with_plain)
                for s, image, (prob, plain) in zip(good, images, probs):
                    yield Prediction(s, image, prob, plain)
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
    postprocess: PostProcess | None = None,
    masks_only: bool = False,
    on_skip: Callable[[Source, str], None] = log_skip,
    progress: bool | None = None,
    unmatched: Sequence[str] = (),
) -> dict[str, Any]:
    """Predict image files into ``out``: ``steelseg-predict``'s work.

    Writes ``masks/<stem>.png`` (0/255), ``overlays/<stem>.png`` (prediction red; with ground
    truth: found green, false alarm red, missed blue), ``panels/<stem>.png`` (the reference
    demo's four panels, where ground truth is known: a Kaggle-layout folder or its
    ``train_images/`` with train.csv beside it), ``predictions.csv`` (``ImageId,ClassId,
    EncodedPixels``: ClassId 0 = any defect class, EncodedPixels empty for no defect) and
    ``predict.json`` (settings, counts, speed, skipped inputs).

    Args:
        predictor: The model.
        sources: The images (:func:`collect_inputs` expands files, folders and globs).
        out: The output folder.
        postprocess: Replaces the predictor's post-processing.
        masks_only: Write masks and the CSV only.
        on_skip: Told each skipped input and why.
        progress: A progress bar (None: on a terminal).
        unmatched: Inputs that named no image (recorded as skipped).

    Returns:
        The content of ``predict.json``; its ``skipped`` maps each skipped input to the reason.

    Raises:
        ValueError: no sources, or ``out`` cannot be a folder.
    """
    out = Path(out)
    if not sources:
        raise ValueError("no input images found")
    check_out_folder(out)
    skipped = Skipped(on_skip)
    for text in unmatched:
        skipped.append((Source(Path(text), text), "no image file matches it"))
    pp = postprocess or predictor.postprocess
    truth = _Truth(sources)
    stems: dict[str, Path] = {}

    def unique_stem(s: Source, image: np.ndarray) -> None:
        stem = Path(s.image_id).stem
        if stem in stems:
            raise ValueError(
                f"same name as {stems[stem]} (outputs would collide); predict the two folders "
                "into different --out folders"
            )
        stems[stem] = s.path

    def save(p: Prediction) -> tuple[str, str, bool]:
        """Post-process one prediction and write its pictures (in a writer thread)."""
        mask = pp.apply(p.prob)
        stem = Path(p.source.image_id).stem
        write_png(out / "masks" / f"{stem}.png", mask.astype(np.uint8) * 255)
        row = (p.source.image_id, rle.encode(mask), False)
        if masks_only:
            return row
        gt = truth.mask(p.source, p.image.shape)
        empty_truth = np.zeros_like(mask) if gt is None else gt
        write_png(
            out / "overlays" / f"{stem}.png", draw.to_bgr(draw.overlay(p.image, mask, empty_truth))
        )
        if gt is None:
            return row
        from steelseg import metric  # ground truth: a labelled folder (needs torch)

        dice = float(metric.dice_per_image(*metric.mask_counts(mask, gt)))
        panel = draw.four_panel(p.image, mask, gt, p.source.image_id, dice)
        write_png(out / "panels" / f"{stem}.png", draw.to_bgr(panel))
        return row[0], row[1], True

    # post-processing and PNG writing run in background threads while the model runs on
    # (in order; at most a few batches wait, so memory stays flat)
    saved: list[tuple[str, str, bool]] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(WRITE_THREADS, "steelseg-write") as pool:
        waiting: deque = deque()
        for p in predictor.predict_files(
            sources, check=unique_stem, on_skip=skipped, progress=progress
        ):
            waiting.append(pool.submit(save, p))
            while len(waiting) > 2 * predictor.batch_size:
                saved.append(waiting.popleft().result())
        saved.extend(f.result() for f in waiting)
    rows = [(image_id, encoded) for image_id, encoded, _ in saved]
    n_panels = sum(panel for _, _, panel in saved)
    seconds = time.perf_counter() - start
    _write_csv(out / "predictions.csv", rows)
    summary = {
        "checkpoint": str(predictor.checkpoint) if predictor.checkpoint else None,
        "model_file": str(predictor.model_file) if predictor.model_file else None,
        "runtime": predictor.runtime,
        "precision": predictor.precision,
        "device": str(predictor.device),
        "input_size": predictor.input_size,
        "postprocess": pp.to_dict(),
        "tta": list(predictor.tta),
        "images": len(rows),
        "with_defect": sum(1 for _, r in rows if r),
        "panels": n_panels,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(rows) / seconds, 3) if seconds > 0 else None,
        "skipped": skipped.by_path(),
    }
    atomic_write_text(out / "predict.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write_csv(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    """``ImageId,ClassId,EncodedPixels``: one row per image, ClassId 0 (any class)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"])
    df.insert(1, "ClassId", rle.ANY_CLASS)
    atomic_write_text(path, df.to_csv(index=False))
