"""Post-processing of probability maps into defect masks, and the tuned values beside a model.

What the best Kaggle solutions did after the network: a probability threshold, removal of small
connected components, emptying masks whose total area is too small (a few false-positive pixels
on clean steel become a correct empty prediction, which the per-image Dice rewards with 1), and
morphological closing / dilation / hole filling. Every step is off or neutral by default.

The values chosen on validation data (``steelseg-tune``) are stored beside the checkpoint in a
JSON sidecar (:func:`sidecar_path`) that prediction and evaluation read by default.

This module needs numpy and OpenCV only (no torch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from steelseg.coco import CONNECTIVITY
from steelseg.io import atomic_write_text, locked

#: Test-time augmentations understood by :mod:`steelseg.predict` (flips are their own inverse).
TTA_CHOICES = ("hflip", "vflip")
#: How a model's image-level gate head (``model.gate``) acts on its masks: not at all; "hard":
#: empty the mask when the image probability is below ``gate_threshold``; "soft": multiply
#: the mask probabilities by the image probability (4th place, Severstal 2019).
GATES = ("none", "hard", "soft")


def check_tta(tta: Sequence[str], where: str = "") -> tuple[str, ...]:
    """Validate a list of test-time augmentations; return it as a tuple without repeats."""
    if isinstance(tta, str):
        tta = [tta]
    ctx = f"{where}: " if where else ""
    for name in tta:
        if name not in TTA_CHOICES:
            raise ValueError(f"{ctx}unknown TTA {name!r}; choose from {list(TTA_CHOICES)}")
    return tuple(dict.fromkeys(tta))


def _kernel(size: int) -> np.ndarray:
    return np.ones((size, size), dtype=np.uint8)


def gate_probabilities(
    prob: np.ndarray, image_prob: float | None, gate: str, threshold: float
) -> np.ndarray:
    """Mask probabilities after the gate (see :data:`GATES`): unchanged for ``none``, times the
    image probability for ``soft``, all zero for ``hard`` below ``threshold`` (so no pixel
    reaches any mask threshold). :meth:`PostProcess.apply` and the tuner's grid both gate here.
    """
    if gate == "soft":
        return prob * np.float32(image_prob)
    if gate == "hard" and image_prob < threshold:
        return np.zeros_like(prob)
    return prob


@dataclass(frozen=True)
class PostProcess:
    """Turns probabilities into a binary mask; every step but the threshold is off by default.

    Steps run in this order: threshold -> close -> dilate -> fill_holes ->
    min_component_area -> min_total_area.

    Args:
        threshold: Probability at or above which a pixel is a defect, in (0, 1).
        min_component_area: Drop 8-connected components smaller than this many pixels (at the
            mask's own resolution); 0 = off.
        min_total_area: Empty the whole mask when fewer pixels than this remain; 0 = off.
        dilate: Side of the square dilation kernel in pixels (the seed's suggestion); 0 = off.
        close: Side of the square kernel of a morphological closing (joins nearby pieces);
            0 = off.
        fill_holes: Fill background regions enclosed by the mask (4-connected background).
        gate: How the image-level probability of a gated model acts, from :data:`GATES`;
            applied first.
        gate_threshold: With ``gate="hard"``: the image probability below which the mask is
            emptied, in (0, 1).
    """

    threshold: float = 0.5
    min_component_area: int = 0
    min_total_area: int = 0
    dilate: int = 0
    close: int = 0
    fill_holes: bool = False
    gate: str = "none"
    gate_threshold: float = 0.5

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
            raise ValueError(f"postprocess threshold must be a number in (0, 1), got {t!r}")
        for name in ("min_component_area", "min_total_area", "dilate", "close"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"postprocess {name} must be an integer >= 0, got {v!r}")
        if not isinstance(self.fill_holes, (bool, np.bool_)):
            raise ValueError(
                f"postprocess fill_holes must be true or false, got {self.fill_holes!r}"
            )
        if self.gate not in GATES:
            raise ValueError(f"postprocess gate must be one of {list(GATES)}, got {self.gate!r}")
        g = self.gate_threshold
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0.0 < g < 1.0:
            raise ValueError(f"postprocess gate_threshold must be a number in (0, 1), got {g!r}")

    # ------------------------------------------------------------------ applying
    def apply(self, prob: np.ndarray, image_prob: float | None = None) -> np.ndarray:
        """Binary mask(s) from probabilities.

        Args:
            prob: Probabilities in [0, 1].
            image_prob: The gate head's probability that the image shows a defect (of this
                class); needed when ``gate`` is not ``none``, ignored otherwise.

        Returns:
            bool array of the same shape.

        Shape:
            prob: (H, W) or (N, H, W) (then ``image_prob`` is (N,)).
        """
        prob = np.asarray(prob)
        if prob.ndim == 3:
            gates = [None] * len(prob) if image_prob is None else np.asarray(image_prob)
            return (
                np.stack([self.apply(p, g) for p, g in zip(prob, gates)])
                if len(prob)
                else prob.astype(bool)
            )
        if prob.ndim != 2:
            raise ValueError(f"prob must be (H, W) or (N, H, W), got shape {prob.shape}")
        if self.gate != "none":
            if image_prob is None:
                raise ValueError(
                    f"postprocess gate={self.gate!r} needs the image probability of a model with "
                    "the gate head (model.gate=true); set gate to none for this model"
                )
            prob = gate_probabilities(prob, float(image_prob), self.gate, self.gate_threshold)
        mask = (prob >= self.threshold).astype(np.uint8)
        if self.close > 1:
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(self.close))
        if self.dilate > 1:
            mask = cv2.dilate(mask, _kernel(self.dilate))
        if self.fill_holes and mask.any():
            mask = _fill_holes(mask)
        if self.min_component_area > 0 and mask.any():
            n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=CONNECTIVITY)
            keep = stats[:, cv2.CC_STAT_AREA] >= self.min_component_area
            keep[0] = False  # label 0 is the background
            mask = keep[labels].astype(np.uint8)
        out = mask.astype(bool)
        if self.min_total_area > 0 and np.count_nonzero(out) < self.min_total_area:
            out[:] = False
        return out

    def __call__(self, prob: np.ndarray, image_prob: float | None = None) -> np.ndarray:
        return self.apply(prob, image_prob)

    def is_neutral(self) -> bool:
        """Whether this is only a threshold (every other step off)."""
        return self == PostProcess(threshold=self.threshold)

    # ------------------------------------------------------------------ (de)serialising
    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready), keyed as the constructor's arguments."""
        d = asdict(self)
        d["threshold"] = float(d["threshold"])
        d["gate_threshold"] = float(d["gate_threshold"])
        d["fill_holes"] = bool(d["fill_holes"])
        for k in ("min_component_area", "min_total_area", "dilate", "close"):
            d[k] = int(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PostProcess:
        """Build from :meth:`to_dict`'s output (missing keys take their defaults).

        Raises:
            ValueError: unknown keys (listing the valid ones) or out-of-range values.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"postprocess must be a mapping of settings, got {d!r}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown postprocess setting(s) {unknown}; valid ones: {valid}")
        kw = dict(d)
        for k in ("min_component_area", "min_total_area", "dilate", "close"):
            v = kw.get(k)
            if isinstance(v, float) and math.isfinite(v) and v.is_integer():
                kw[k] = int(v)  # 3.0 from a JSON writer that keeps floats
        return cls(**kw)


@dataclass(frozen=True)
class ClassPostProcess:
    """One :class:`PostProcess` per class of a multi-class model (``model.classes > 1``).

    Args:
        classes: The settings of class 1, 2, ... in order.
    """

    classes: tuple[PostProcess, ...]

    def __post_init__(self) -> None:
        if not self.classes or not all(isinstance(p, PostProcess) for p in self.classes):
            raise ValueError("ClassPostProcess needs one PostProcess per class")
        object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def uniform(cls, postprocess: PostProcess, n_classes: int) -> ClassPostProcess:
        """The same settings for every class."""
        return cls((postprocess,) * n_classes)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def threshold(self) -> float:
        """The threshold shared by every class (the first class's where they differ)."""
        return self.classes[0].threshold

    def apply(self, prob: np.ndarray, image_prob: np.ndarray | None = None) -> np.ndarray:
        """Per-class binary masks.

        Shape:
            prob: (C, H, W) probabilities; image_prob: (C,) gate probabilities or None.
            Returns (C, H, W) bool.
        """
        prob = np.asarray(prob)
        if prob.ndim != 3 or len(prob) != self.n_classes:
            raise ValueError(
                f"prob must be ({self.n_classes}, H, W) for {self.n_classes} classes, got "
                f"shape {prob.shape}"
            )
        gates = [None] * self.n_classes if image_prob is None else np.asarray(image_prob)
        return np.stack([pp.apply(p, g) for pp, p, g in zip(self.classes, prob, gates)])

    def __call__(self, prob: np.ndarray, image_prob: np.ndarray | None = None) -> np.ndarray:
        return self.apply(prob, image_prob)

    def is_neutral(self) -> bool:
        return all(p.is_neutral() for p in self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": [p.to_dict() for p in self.classes]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassPostProcess:
        if not isinstance(d, Mapping) or not isinstance(d.get("classes"), list):
            raise ValueError(f"per-class postprocess must be {{'classes': [...]}}, got {d!r}")
        return cls(tuple(PostProcess.from_dict(p) for p in d["classes"]))


def replaced(
    postprocess: PostProcess | ClassPostProcess, **changes: Any
) -> PostProcess | ClassPostProcess:
    """``postprocess`` with some settings changed (for every class of a per-class one)."""
    if isinstance(postprocess, ClassPostProcess):
        return ClassPostProcess(tuple(replace(p, **changes) for p in postprocess.classes))
    return replace(postprocess, **changes)


def postprocess_from_dict(d: Mapping[str, Any]) -> PostProcess | ClassPostProcess:
    """:meth:`PostProcess.to_dict` or :meth:`ClassPostProcess.to_dict` output -> the object."""
    if isinstance(d, Mapping) and "classes" in d:
        return ClassPostProcess.from_dict(d)
    return PostProcess.from_dict(d)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Set to 1 every background pixel not 4-connected to the image border."""
    h, w = mask.shape
    outside = np.zeros((h + 2, w + 2), dtype=np.uint8)  # a background frame joins every edge
    outside[1:-1, 1:-1] = mask
    cv2.floodFill(outside, None, (0, 0), 1)  # flags=4: background connectivity 4
    return mask | (outside[1:-1, 1:-1] == 0)


def apply_postprocess(
    postprocess: PostProcess | ClassPostProcess,
    prob: np.ndarray,
    image_prob: np.ndarray | None = None,
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


def class_map(masks: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The class id of each pixel: 0 where no class is predicted, else the most probable of
    the classes predicted there (multi-label masks may overlap).

    Shape:
        masks: bool (C, H, W); prob: (C, H, W). Returns uint8 (H, W), values 0..C.
    """
    ids = np.argmax(np.where(masks, prob, -1.0), axis=0).astype(np.uint8) + 1
    ids[~masks.any(axis=0)] = 0
    return ids


# ----------------------------------------------------------------------------- tuned sidecar
def sidecar_path(checkpoint: str | Path) -> Path:
    """Where the tuned post-processing of a checkpoint lives: ``<name>.postprocess.json``."""
    return Path(checkpoint).with_suffix(".postprocess.json")


def load_tuned(
    checkpoint: str | Path,
) -> tuple[PostProcess | ClassPostProcess, tuple[str, ...]] | None:
    """The tuned (post-processing, TTA) stored beside ``checkpoint``, or None if there is none.

    Raises:
        ValueError: the sidecar exists but is not valid (names the file).
    """
    path = sidecar_path(checkpoint)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "postprocess" not in data:
            raise ValueError("it has no 'postprocess' entry")
        return postprocess_from_dict(data["postprocess"]), check_tta(data.get("tta", []))
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{path} is not a valid tuned post-processing file ({e}); delete it or run "
            "steelseg-tune again"
        ) from None


@dataclass(frozen=True)
class ModelSettings:
    """How a model file predicts unless told otherwise (see :func:`model_settings`).

    Attributes:
        postprocess: The stored post-processing; None: a threshold at the model's own.
        tta: The stored test-time flips.
        sidecar: The ``steelseg-tune`` file they came from, if any.
    """

    postprocess: PostProcess | ClassPostProcess | None = None
    tta: tuple[str, ...] = ()
    sidecar: Path | None = None


def model_settings(
    model_file: str | Path,
    metadata: Mapping[str, Any] | None = None,
    use_tuned: bool = True,
    tuned_beside: str | Path | None = None,
) -> ModelSettings:
    """The post-processing and test-time flips a model file predicts with by default: the one
    place that says which stored values win.

    With ``use_tuned``, the ``steelseg-tune`` sidecar beside ``tuned_beside`` (default the
    model file; a checkpoint's export passes its checkpoint) wins, then an export's
    ``metadata`` (what it recorded when it was made); otherwise, or without either, nothing
    is stored: a threshold at the model's own and no flips.

    Raises:
        ValueError: a sidecar that is not valid (names the file).
    """
    if not use_tuned:
        return ModelSettings()
    beside = Path(tuned_beside if tuned_beside is not None else model_file)
    tuned = load_tuned(beside)
    if tuned is not None:
        return ModelSettings(tuned[0], tuned[1], sidecar_path(beside))
    if metadata is not None and "postprocess" in metadata:
        return ModelSettings(
            postprocess_from_dict(metadata["postprocess"]), check_tta(metadata.get("tta", []))
        )
    return ModelSettings()


def save_tuned(
    checkpoint: str | Path,
    postprocess: PostProcess | ClassPostProcess,
    tta: Sequence[str],
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Store tuned values beside ``checkpoint`` (atomically); return the sidecar's path.

    The file holds ``{"postprocess": {...}, "tta": [...], **info}``, where ``info`` says what
    the values were tuned on (split, score, grid).
    """
    info = dict(info or {})
    clash = sorted({"postprocess", "tta"} & set(info))
    if clash:
        raise ValueError(f"info must not contain the keys {clash}; they are written from arguments")
    data = {"postprocess": postprocess.to_dict(), "tta": list(check_tta(tta)), **info}
    path = sidecar_path(checkpoint)
    with locked(path, "the tuned post-processing"):  # two tunes of one model: one at a time
        atomic_write_text(path, json.dumps(data, indent=2, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays in ``info``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
