"""Pictures of predictions: colour overlays (found / false alarm / missed, or one colour per
defect class) and the reference task's four-panel picture.

Used by ``steelseg-predict`` (PNG files) and the evaluation report (inline pictures); numpy and
OpenCV only. Colours are RGB; :func:`to_bgr` turns a picture around for ``cv2.imwrite``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Overlay colours (RGB): found defect, false alarm (or, without ground truth, any prediction),
#: missed defect.
TP_RGB, FP_RGB, FN_RGB = (34, 197, 94), (239, 68, 68), (59, 130, 246)
#: Overlay colour (RGB) of each Severstal defect class, for models of one channel per class;
#: none of them is the binary overlay's red, green or blue.
CLASS_RGB = {1: (250, 204, 21), 2: (34, 211, 238), 3: (217, 70, 239), 4: (249, 115, 22)}
TINT = 0.35  # weight of the colour over the steel: the texture under a defect stays visible
LABEL_HEIGHT = 28  # pixels of the caption bar above each panel


def _shrink_any(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Downscale a bool mask so that a cell is set when any pixel under it is (thin lines stay)."""
    return cv2.resize(mask.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) > 0


def overlay(
    image: np.ndarray, pred: np.ndarray, target: np.ndarray, width: int | None = None
) -> np.ndarray:
    """The grey image with found (green), false (red) and missed (blue) defect pixels tinted.

    Args:
        image: Grey uint8 image.
        pred: Predicted mask (bool), same shape.
        target: Ground-truth mask (bool), same shape.
        width: Output width (height keeps the aspect ratio); None for the image's own.

    Returns:
        RGB uint8 (h, width, 3), each region tinted and outlined in its colour.

    Shape:
        image, pred, target: (H, W).
    """
    pred, target = pred.astype(bool), target.astype(bool)
    regions = ((pred & target, TP_RGB), (pred & ~target, FP_RGB), (~pred & target, FN_RGB))
    return _tinted(image, regions, width)


def class_overlay(image: np.ndarray, classes: np.ndarray, width: int | None = None) -> np.ndarray:
    """The grey image with each predicted defect class tinted in its :data:`CLASS_RGB` colour.

    Args:
        image: Grey uint8 image.
        classes: The class id of each pixel (0: background, 1..4: :data:`CLASS_RGB`'s keys).
        width: Output width (height keeps the aspect ratio); None for the image's own.

    Returns:
        RGB uint8 (h, width, 3), each class tinted and outlined in its colour.

    Shape:
        image, classes: (H, W).
    """
    return _tinted(image, [(classes == c, rgb) for c, rgb in CLASS_RGB.items()], width)


def prediction_overlay(
    image: np.ndarray, mask: np.ndarray, classes: np.ndarray, truth: np.ndarray | None = None
) -> np.ndarray:
    """The overlay of a prediction, as ``steelseg-predict`` and ``steelseg-serve`` draw it: a
    binary model's mask against ``truth`` (:func:`overlay`; without truth every defect is a
    false alarm's red), or a per-class model's class ids (:func:`class_overlay`).

    Shape:
        image: (H, W); mask: bool (H, W) (binary) or (C, H, W); classes: the class id of each
        pixel (H, W); truth: bool (H, W) or None. Returns RGB uint8 (H, W, 3).
    """
    if mask.ndim == 2:
        return overlay(image, mask, np.zeros_like(mask) if truth is None else truth)
    return class_overlay(image, classes)


def _tinted(
    image: np.ndarray, regions: Sequence[tuple[np.ndarray, tuple[int, int, int]]], width: int | None
) -> np.ndarray:
    """The grey image as RGB with each (bool mask, colour) region tinted and outlined."""
    h, w = image.shape
    size = (w, h) if width is None else (int(width), max(1, round(h * width / w)))
    grey = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if size != (w, h) else image
    canvas = cv2.cvtColor(np.ascontiguousarray(grey), cv2.COLOR_GRAY2RGB)
    outlines = []
    for region, rgb in regions:
        small = region if size == (w, h) else _shrink_any(region, size)
        if small.any():  # the regions are disjoint: tint each one's pixels only
            tinted = (1 - TINT) * canvas[small].astype(np.float32) + TINT * np.array(
                rgb, np.float32
            )
            canvas[small] = tinted.round().astype(np.uint8)
            contours, _ = cv2.findContours(
                small.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            outlines.append((contours, rgb))
    for contours, rgb in outlines:  # outlines last, so no tint dims them
        cv2.drawContours(canvas, contours, -1, rgb, 1)
    return canvas


def to_bgr(rgb: np.ndarray) -> np.ndarray:
    """An RGB picture in OpenCV's BGR order (for ``cv2.imwrite`` / :func:`steelseg.io.write_png`)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)


def _captioned(panel: np.ndarray, text: str) -> np.ndarray:
    if panel.ndim == 2:
        panel = cv2.cvtColor(panel, cv2.COLOR_GRAY2RGB)
    bar = np.full((LABEL_HEIGHT, panel.shape[1], 3), 32, dtype=np.uint8)
    cv2.putText(bar, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def four_panel(
    image: np.ndarray, mask: np.ndarray, truth: np.ndarray, title: str, dice: float
) -> np.ndarray:
    """The reference demo's picture, stacked vertically: original / predicted / overlay / truth.

    Args:
        image: Grey uint8 image.
        mask: Predicted mask (bool).
        truth: Ground-truth mask (bool).
        title: Caption of the first panel (the image's name).
        dice: The image's Dice, shown under the ground truth.

    Returns:
        RGB uint8 (4 * (H + 28), W, 3).

    Shape:
        image, mask, truth: (H, W).
    """
    m, t = mask.astype(bool), truth.astype(bool)
    panels = [
        (image.astype(np.uint8), f"{title}: original"),
        (m.astype(np.uint8) * 255, f"predicted mask ({int(m.sum())} px)"),
        (overlay(image, m, t), "overlay: found green, false alarm red, missed blue"),
        (t.astype(np.uint8) * 255, f"ground truth ({int(t.sum())} px), Dice {dice:.3f}"),
    ]
    return np.vstack([_captioned(p, text) for p, text in panels])
