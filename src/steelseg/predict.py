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
evaluation, tuning and pseudo-labelling all run through it; :func:`steelseg.writer.predict_to_folder`
is ``steelseg-predict``'s work (masks, overlays, panels, a Kaggle-format CSV).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from steelseg.inputs import Source, log_skip
from steelseg.io import (
    ImageError,
    read_grey,
)
from steelseg.postprocess import (
    TTA_CHOICES,
    ClassPostProcess,
    PostProcess,
    apply_postprocess,
    check_tta,
    model_settings,
    replaced,
)
from steelseg.runtime import (
    STRIDE,
    Engine,
    TorchEngine,
    export_runtime,
    load_metadata,
    open_engine,
)

#: what turns probabilities into masks: one setting for a binary model (or for every class),
#: or one per class
AnyPostProcess = PostProcess | ClassPostProcess

log = logging.getLogger(__name__)

#: background threads that decode input images while the model runs (OpenCV releases the GIL
#: while it decodes)
READ_THREADS = 2

__all__ = [
    "TTA_CHOICES",
    "Prediction",
    "Predictor",
    "read_grey",
]


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
        overrides: :class:`PostProcess` fields replacing single values of ``postprocess``
            (of every class), e.g. ``{"min_total_area": 500}``.

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
        overrides: Mapping[str, Any] | None = None,
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
        #: post-processing values given on top of the stored ones (e.g. command-line options)
        self.overrides = dict(overrides or {})
        self.postprocess = self.check_postprocess(
            replaced(postprocess or PostProcess(threshold=self.model_threshold), **self.overrides)
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
        postprocess: PostProcess | ClassPostProcess | None = None,
        tta: Sequence[str] | None = None,
        batch_size: int = 8,
        use_tuned: bool = True,
        trust_checkpoint: bool = False,
        precision: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Predictor:
        """Load a checkpoint once, on PyTorch; post-processing and TTA default to the tuned ones.

        ``postprocess`` / ``tta`` left None take the values ``steelseg-tune`` stored beside the
        checkpoint (:func:`steelseg.postprocess.model_settings`) when ``use_tuned``; otherwise
        a threshold at the module's and no TTA; ``overrides`` then replace single values.
        ``trust_checkpoint`` allows checkpoints that need full (code-running) unpickling; see
        :meth:`SteelSegModule.load_from_checkpoint`. Other runtimes run exports
        (:meth:`from_export`; :func:`steelseg.deploy.load_predictor` makes them on demand).
        """
        from steelseg.model import SteelSegModule

        stored = model_settings(checkpoint, use_tuned=use_tuned)  # a bad sidecar fails first
        module = SteelSegModule.load_from_checkpoint(checkpoint, weights_only=not trust_checkpoint)
        predictor = cls(
            module,
            device,
            postprocess if postprocess is not None else stored.postprocess,
            stored.tta if tta is None else tta,
            batch_size,
            precision,
            overrides=overrides,
        )
        predictor.model_file = predictor.checkpoint = Path(checkpoint)
        predictor.tuned_sidecar = stored.sidecar
        return predictor

    @classmethod
    def from_export(
        cls,
        path: str | os.PathLike,
        runtime: str | None = None,
        precision: str | None = None,
        postprocess: PostProcess | ClassPostProcess | None = None,
        tta: Sequence[str] | None = None,
        batch_size: int = 8,
        use_tuned: bool = True,
        threads: int = 0,
        overrides: Mapping[str, Any] | None = None,
        tuned_beside: str | os.PathLike | None = None,
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
            postprocess, tta: None: the stored values
                (:func:`steelseg.postprocess.model_settings`: a ``steelseg-tune`` sidecar
                beside the file, else the metadata's), when ``use_tuned``.
            threads: CPU threads of the runtime (0: its default, every core).
            overrides: Post-processing values replacing single stored ones.
            tuned_beside: Where the sidecar is looked for instead of beside ``path`` (a
                checkpoint's cached export: the checkpoint).
        """
        meta = load_metadata(path)
        runtime, precision = export_runtime(path, meta, runtime, precision)
        engine = open_engine(path, runtime, precision, threads)
        stored = model_settings(path, meta, use_tuned, tuned_beside)
        predictor = cls(
            engine,
            postprocess=postprocess if postprocess is not None else stored.postprocess,
            tta=stored.tta if tta is None else tta,
            batch_size=batch_size,
            input_size=meta.get("input_size"),
            threshold=meta.get("model_threshold", meta.get("threshold")),
            classes=meta.get("classes", 1),  # exports from before per-class models: binary
            gated=meta.get("gated", False),
            overrides=overrides,
        )
        predictor.model_file = Path(path)
        predictor.metadata = meta
        source = meta.get("checkpoint")
        predictor.checkpoint = Path(source) if source else None
        predictor.tuned_sidecar = stored.sidecar
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
            # INTER_AREA, as the training cache was made (steelseg.cache.load_sample)
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
        masks, image = self.engine.probabilities(np.ascontiguousarray(x))
        if masks.ndim != 4 or masks.shape[1] != self.classes or (image is None) == self.gated:
            got = f"{masks.shape}" + ("" if image is None else f" and {image.shape}")
            raise ValueError(
                f"the model gave outputs of shape {got}, not the {self.classes}-class mask "
                f"logits{' and image logits' if self.gated else ''} its metadata names"
            )
        return masks, image

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
