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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from steelseg.io import atomic_write_text, locked

#: Test-time augmentations understood by :mod:`steelseg.predict` (flips are their own inverse).
TTA_CHOICES = ("hflip", "vflip")


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
    """

    threshold: float = 0.5
    min_component_area: int = 0
    min_total_area: int = 0
    dilate: int = 0
    close: int = 0
    fill_holes: bool = False

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

    # ------------------------------------------------------------------ applying
    def apply(self, prob: np.ndarray) -> np.ndarray:
        """Binary mask(s) from probabilities.

        Args:
            prob: Probabilities in [0, 1].

        Returns:
            bool array of the same shape.

        Shape:
            prob: (H, W) or (N, H, W).
        """
        prob = np.asarray(prob)
        if prob.ndim == 3:
            return np.stack([self.apply(p) for p in prob]) if len(prob) else prob.astype(bool)
        if prob.ndim != 2:
            raise ValueError(f"prob must be (H, W) or (N, H, W), got shape {prob.shape}")
        mask = (prob >= self.threshold).astype(np.uint8)
        if self.close > 1:
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(self.close))
        if self.dilate > 1:
            mask = cv2.dilate(mask, _kernel(self.dilate))
        if self.fill_holes and mask.any():
            mask = _fill_holes(mask)
        if self.min_component_area > 0 and mask.any():
            n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            keep = stats[:, cv2.CC_STAT_AREA] >= self.min_component_area
            keep[0] = False  # label 0 is the background
            mask = keep[labels].astype(np.uint8)
        out = mask.astype(bool)
        if self.min_total_area > 0 and np.count_nonzero(out) < self.min_total_area:
            out[:] = False
        return out

    def __call__(self, prob: np.ndarray) -> np.ndarray:
        return self.apply(prob)

    def is_neutral(self) -> bool:
        """Whether this is only a threshold (every other step off)."""
        return self == PostProcess(threshold=self.threshold)

    # ------------------------------------------------------------------ (de)serialising
    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready), keyed as the constructor's arguments."""
        d = asdict(self)
        d["threshold"] = float(d["threshold"])
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


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Set to 1 every background pixel not 4-connected to the image border."""
    h, w = mask.shape
    outside = np.zeros((h + 2, w + 2), dtype=np.uint8)  # a background frame joins every edge
    outside[1:-1, 1:-1] = mask
    cv2.floodFill(outside, None, (0, 0), 1)  # flags=4: background connectivity 4
    return mask | (outside[1:-1, 1:-1] == 0)


# ----------------------------------------------------------------------------- tuned sidecar
def sidecar_path(checkpoint: str | Path) -> Path:
    """Where the tuned post-processing of a checkpoint lives: ``<name>.postprocess.json``."""
    return Path(checkpoint).with_suffix(".postprocess.json")


def load_tuned(checkpoint: str | Path) -> tuple[PostProcess, tuple[str, ...]] | None:
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
        return PostProcess.from_dict(data["postprocess"]), check_tta(data.get("tta", []))
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{path} is not a valid tuned post-processing file ({e}); delete it or run "
            "steelseg-tune again"
        ) from None


def save_tuned(
    checkpoint: str | Path,
    postprocess: PostProcess,
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
