"""Synthetic steel-surface images with defect masks, in the Kaggle Severstal folder layout.

The Kaggle data cannot be downloaded everywhere, so ``steelseg-synth`` writes a stand-in that
the whole pipeline can run on::

    DIR/train_images/<id>.jpg     1600x256 grey JPEGs stored as 3 equal channels
    DIR/train.csv                 ImageId,ClassId,EncodedPixels (defect rows only)
    DIR/test_images/<id>.jpg      unlabelled images made the same way
    DIR/sample_submission.csv     ImageId,EncodedPixels,ClassId ("1 1", class 0 per image)
    DIR/synth.json                marks the folder as made here, with the arguments used

The images imitate rolled steel as seen by the Severstal line cameras: the defect-free steel and
the nuisances that are not defects (the dark area beyond the sheet edge, bands of light, stains,
mill scale, rolled texture, specular streaks, JPEG artefacts) come from :mod:`steelseg.surface`,
without masks; the files are JPEG at quality 95 with 4:2:0 chroma (what the Kaggle files use).
The four defect classes follow the real class frequencies and co-occurrences (measured on
all 12,568 Kaggle train images) and the real component sizes (percentiles measured on 2,549
annotated Kaggle masks). As in Kaggle, each mask is a coarse polygon slightly larger than the
visible defect, and classes never overlap.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from steelseg import surface
from steelseg.io import atomic_write_bytes, atomic_write_text, locked
from steelseg.rle import SHAPE, encode
from steelseg.surface import NUISANCES, Nuisances

H, W = SHAPE
JPEG_QUALITY = 95  # the quantisation tables of the Kaggle JPEGs are libjpeg's at quality 95
MARKER = "synth.json"
N_IMAGES = 400  # train images of a data set when no count is given
VERSION = 2  # of the generator's look; 2: the nuisances of steelseg.surface. A data set made
# by another version is made again (is_complete), never mixed with this one's.

# Which classes an image has, with the number of Kaggle train images of each combination
# (12,568 images, 5,902 defect-free); sampling from it reproduces the class frequencies and
# which classes appear together.
CLASS_COMBOS: tuple[tuple[tuple[int, ...], int], ...] = (
    ((), 5902),
    ((3,), 4759),
    ((1,), 769),
    ((4,), 516),
    ((3, 4), 284),
    ((2,), 195),
    ((1, 3), 91),
    ((1, 2), 35),
    ((2, 3), 14),
    ((1, 2, 3), 2),
    ((2, 4), 1),
)

# Per class, measured on the annotated Kaggle masks (8-connected components):
#   n_comp:  how many masks have 1, 2, 3, ... components;
#   height, width: component bounding-box percentiles at QUANTILES (extremes trimmed);
#   hw_rank_corr: Spearman correlation of height and width;
#   aspect:  height / width range, a little wider than its 10th-90th percentiles;
#   lone_draws: a lone component is larger than those in groups (median area 2.6x, 1.3x,
#            1.3x, 3.3x): its size quantile is the highest of this many draws;
#   edge:    chance that a component runs off the top or bottom edge, set so that the shares
#            measured on the output match the real ones (16%, 70%, 55%, 39% of components).
QUANTILES = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
CLASS_SHAPES: dict[int, dict] = {
    1: dict(
        n_comp=(143, 45, 22, 19, 19, 15, 22, 13, 6, 11, 7, 5),
        height=(16, 26, 32, 42, 60, 92, 180),
        width=(12, 18, 21, 25, 32, 43, 80),
        hw_rank_corr=0.41,
        aspect=(0.7, 5.0),
        lone_draws=3,
        edge=0.16,
    ),
    2: dict(
        n_comp=(75, 22, 4),
        height=(60, 85, 116, 157, 212, 256, 256),
        width=(7, 12, 15, 19, 26, 32, 43),
        hw_rank_corr=0.37,
        aspect=(3.0, 16.0),
        lone_draws=1,
        edge=0.70,
    ),
    3: dict(
        n_comp=(539, 413, 278, 170, 112, 80, 29, 21, 19, 7, 7, 5),
        height=(12, 34, 64, 146, 255, 256, 256),
        width=(8, 16, 21, 33, 65, 171, 400),
        hw_rank_corr=0.0,
        aspect=(0.25, 20.0),
        lone_draws=1,
        edge=0.40,
    ),
    4: dict(
        n_comp=(175, 130, 53, 30, 14, 9, 5, 1, 3, 1, 1, 1),
        height=(20, 34, 60, 100, 157, 225, 256),
        width=(24, 37, 70, 126, 213, 348, 600),
        hw_rank_corr=0.69,
        aspect=(0.25, 2.2),
        lone_draws=3,
        edge=0.38,
    ),
}


def _sample_quantiles(u: float, knots: tuple[int, ...]) -> int:
    """Inverse CDF: the value at probability ``u`` of a distribution given by its quantiles."""
    return int(round(float(np.interp(u, QUANTILES, knots))))


def _fit_box(pts: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Scale polygon points (n, 2) to span exactly ``box`` = (x0, x1, y0, y1); int32."""
    lo, span = pts.min(0), np.maximum(np.ptp(pts, 0), 1e-6)
    size = np.array([box[1] - box[0], box[3] - box[2]])
    return np.rint(np.array([box[0], box[2]]) + (pts - lo) / span * size).astype(np.int32)


def _streak_polygon(
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    open_top: bool,
    open_bottom: bool,
) -> np.ndarray:
    """Coarse polygon around a vertical streak: slanted, a little uneven, pointed inside.

    Like the Kaggle annotations: a handful of vertices per side, tapering where the defect
    ends inside the frame, cut straight where it runs off the top or bottom edge.
    """
    n = int(rng.integers(3, 7))
    ys = np.linspace(0.0, 1.0, n)
    xs = rng.normal(0, 0.3) * ys + rng.normal(0, 0.1, n)  # in units of the width
    half = 0.5 * rng.uniform(0.65, 1.0, n)
    if not open_top:
        half[0] *= 0.3
    if not open_bottom:
        half[-1] *= 0.3
    pts = np.concatenate([np.stack([xs - half, ys], 1), np.stack([xs + half, ys], 1)[::-1]])
    return _fit_box(pts, box)


def _blob_polygon(
    rng: np.random.Generator, box: tuple[float, float, float, float], jitter: float
) -> np.ndarray:
    """Coarse star-shaped polygon filling ``box``; ``jitter`` makes it ragged."""
    n = int(rng.integers(6, 12))
    # Vertices spread evenly around, each nudged by up to a third of the spacing: random
    # angles could bunch up and leave a sliver.
    angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n) + rng.random()) * (2 * np.pi / n)
    radius = 1.0 - jitter * rng.random(n)
    return _fit_box(np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1), box)


def _glitter(rng: np.random.Generator, shape: tuple[int, int], per_px: float) -> np.ndarray:
    """Sharp bright points of torn metal, ``per_px`` of them per pixel."""
    out = np.zeros(shape, np.float32)
    n = int(shape[0] * shape[1] * per_px)
    out[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = rng.uniform(60, 200, n)
    return cv2.GaussianBlur(out, (0, 0), 0.7)


def _scratches(rng: np.random.Generator, inner: np.ndarray) -> np.ndarray:
    """Class 3 (scratches): grey-level change over the region ``inner``.

    Parallel scratch lines along the defect, each a bright glint beside a dark groove, broken
    in places, on ground a little to clearly darker than the steel around, with glitter. On
    real scratches the std inside the mask is about twice that of the steel around.
    """
    ch, cw = inner.shape
    # The lines follow the polygon's lean (a straight fit through its row centres), within
    # the few degrees off vertical of real scratches.
    rows = np.flatnonzero(inner.max(1) > 0.5)
    centres = (inner[rows] * np.arange(cw)).sum(1) / np.maximum(inner[rows].sum(1), 1e-6)
    lean = float(np.clip(np.polyfit(rows, centres, 1)[0], -0.05, 0.05)) if len(rows) > 1 else 0.0
    mid = float(centres.mean() - lean * rows.mean()) if len(rows) else cw / 2
    lines = np.zeros((ch, cw), np.float32)
    for dx in rng.uniform(-0.35, 0.35, int(rng.integers(1, 2 + cw // 4))) * cw:
        for side, value in ((0, rng.uniform(60, 140)), (rng.choice([-2, 2]), -rng.uniform(20, 50))):
            x_top, x_bottom = mid + dx + side, mid + dx + side + lean * ch
            cv2.line(
                lines,
                (round(x_top), 0),
                (round(x_bottom), ch),
                float(value),
                int(rng.integers(1, 3)),
            )
    # Breaks: the lines fade in and out over 10-40 px.
    on = surface.field(rng, (max(2, ch // 25), cw), (ch, cw))
    on = np.clip(cv2.GaussianBlur(on, (0, 0), sigmaX=2, sigmaY=0.1) * 2 + 0.5, 0, 1)
    lines = cv2.GaussianBlur(lines, (0, 0), 0.7) * on
    return rng.uniform(-25, -5) + lines + _glitter(rng, (ch, cw), 0.01)


def _pits(rng: np.random.Generator, inner: np.ndarray) -> np.ndarray:
    """Class 1 (pits): grey-level change over the region ``inner``.

    A few levels brighter, with bright spots and darker pits a few px across, a little
    elongated along the rolling direction, and glitter.
    """
    ch, cw = inner.shape
    spots = surface.field(rng, (max(2, ch // 4), max(2, cw // 3)), (ch, cw), cv2.INTER_CUBIC)
    return (
        rng.uniform(2, 12)
        + rng.uniform(35, 70) * np.maximum(spots - 0.6, 0)
        - rng.uniform(20, 40) * np.maximum(-spots - 1.0, 0)
        + _glitter(rng, (ch, cw), 0.01)
    )


def _groove(rng: np.random.Generator, inner: np.ndarray) -> np.ndarray:
    """Class 2 (thin marks): grey-level change over the region ``inner``.

    A groove about 20 levels darker than the steel around (its soft-edged region makes it
    deepest on the centre line), its depth varying along its length.
    """
    along = 1.0 + 0.25 * surface.field(rng, (max(2, inner.shape[0] // 20), 1), (inner.shape[0], 1))
    return -rng.uniform(20, 40) * along * np.ones_like(inner)


def _patch(rng: np.random.Generator, inner: np.ndarray) -> np.ndarray:
    """Class 4 (patches): grey-level change over the region ``inner``.

    A scale patch, a little darker and mottled, with flakes: short bright and dark dashes
    across the rolling direction.
    """
    ch, cw = inner.shape
    mottle = 5.0 * surface.field(rng, (max(2, ch // 25), max(2, cw // 25)), (ch, cw))
    flakes = surface.field(rng, (max(2, ch // 3), max(2, cw // 30)), (ch, cw))  # ~3 x 30 px
    return (
        rng.uniform(-25, -10)
        + mottle
        + 40.0 * np.sign(flakes) * np.maximum(np.abs(flakes) - 1.5, 0)
    )


class _Style(NamedTuple):
    """How the visible part of a defect class is drawn."""

    draw: Callable[[np.random.Generator, np.ndarray], np.ndarray]  # grey-level change
    ragged: float  # outline wobble, as a share of the slack inside the polygon
    soft: float  # edge ramp as a share of the half-width (0: crisp, 1.5 px)
    relief: tuple[float, float]  # range of the relief's strength, grey levels


DEFECT_STYLE = {
    1: _Style(_pits, ragged=0.6, soft=0.0, relief=(5, 20)),
    2: _Style(_groove, ragged=0.2, soft=0.4, relief=(10, 25)),
    3: _Style(_scratches, ragged=0.3, soft=0.25, relief=(5, 15)),
    4: _Style(_patch, ragged=0.6, soft=0.0, relief=(20, 40)),
}


def _place_class(
    rng: np.random.Generator,
    cls: int,
    img: np.ndarray,
    occupied: np.ndarray,
    x_range: tuple[int, int],
) -> np.ndarray:
    """Draw the components of one defect class into ``img``; return its mask.

    Components are placed around a common centre with a random spread (real masks range from
    a tight cluster to marks scattered over the width), never within 4 px of another defect
    (``occupied``, updated here).
    """
    shape = CLASS_SHAPES[cls]
    counts = np.asarray(shape["n_comp"], float)
    n_comp = 1 + int(rng.choice(len(counts), p=counts / counts.sum()))
    mask = np.zeros((H, W), np.uint8)
    centre, spread = rng.uniform(*x_range), math.exp(rng.uniform(math.log(20), math.log(600)))
    for _ in range(n_comp):
        # Height and width share their quantile with probability hw_rank_corr, which gives
        # that rank correlation while keeping both marginals exact. The quantile of a lone
        # component is the highest of lone_draws draws (u ** (1 / k) is the max of k).
        u_h = rng.random() ** (1 / shape["lone_draws"] if n_comp == 1 else 1)
        u_w = u_h if rng.random() < shape["hw_rank_corr"] else rng.random()
        h, w = _sample_quantiles(u_h, shape["height"]), _sample_quantiles(u_w, shape["width"])
        w = int(np.clip(w, h / shape["aspect"][1], h / shape["aspect"][0]))
        w = min(w, x_range[1] - x_range[0] - 2)
        # Vertical extent; components at an edge run on past it and are cut there.
        streak = cls == 2 or (cls != 4 and h > 1.5 * w)
        top = bottom = h >= H
        if not top and rng.random() < shape["edge"]:
            top = rng.random() < 0.5
            bottom = not top
        beyond = 3 if streak else rng.uniform(0.1, 0.6) * h
        if top or bottom:
            y_top = -beyond if top else H - h
            y_bottom = H + beyond if bottom else h
        else:
            y_top = float(rng.integers(1, max(2, H - h)))
            y_bottom = y_top + h
        for attempt in range(10):
            # First near the class's centre, then anywhere on the strip.
            cx = rng.normal(centre, spread) if attempt < 5 else rng.uniform(*x_range)
            cx = float(np.clip(cx, x_range[0] + w / 2, x_range[1] - w / 2))
            box = (cx - w / 2, cx + w / 2, y_top, y_bottom)
            if streak:
                pts = _streak_polygon(rng, box, top, bottom)
            else:
                pts = _blob_polygon(rng, box, 0.35 if cls == 4 else 0.2)
            # Work in the polygon's bounding box, with room for the 9x9 dilation below.
            x0, y0 = np.maximum(pts.min(0) - 5, 0)
            x1, y1 = np.minimum(pts.max(0) + 6, (W, H))
            if x1 <= x0 or y1 <= y0:
                continue
            box_slice = np.s_[y0:y1, x0:x1]
            comp = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillPoly(comp, [pts - (x0, y0)], 1)
            if comp.any() and not (comp & occupied[box_slice]).any():
                break
        else:
            continue  # no free spot: keep the image with fewer components
        _render(rng, cls, img[box_slice], comp)
        mask[box_slice] |= comp
        occupied[box_slice] |= cv2.dilate(comp, np.ones((9, 9), np.uint8))
    return mask


def _render(rng: np.random.Generator, cls: int, patch: np.ndarray, comp: np.ndarray) -> None:
    """Add the visible defect inside the polygon ``comp`` to ``patch`` (same-size views).

    Annotators draw around the defect with some slack, so the visible part ends about 10% of
    the short side inside the polygon, along a ragged line (the polygons are coarse). The
    relief lights one side of the outline and shades the other.
    """
    style = DEFECT_STYLE[cls]
    ch, cw = comp.shape
    dist = cv2.distanceTransform(comp, cv2.DIST_L2, 3)
    _, _, bw, bh = cv2.boundingRect(comp)
    slack = float(np.clip(0.1 * min(bw, bh), 1, 6))
    edge = max(1.5, style.soft * min(bw, bh) / 2)
    wobble = surface.field(rng, (max(2, ch // 12), max(2, cw // 12)), (ch, cw), cv2.INTER_CUBIC)
    inner = np.clip((dist - slack * (1 + style.ragged * wobble)) / edge, 0, 1)
    if cls == 4:
        # Scale patches partly hide the rolling texture under them.
        patch += 0.3 * inner * (cv2.GaussianBlur(patch, (0, 0), 1.5) - patch)
    angle = rng.uniform(0, 2 * np.pi)  # light direction; 8 is the gain of the Sobel kernel
    slope = (
        math.cos(angle) * cv2.Sobel(inner, cv2.CV_32F, 1, 0, ksize=3)
        + math.sin(angle) * cv2.Sobel(inner, cv2.CV_32F, 0, 1, ksize=3)
    ) / 8
    patch += style.draw(rng, inner) * inner + rng.uniform(*style.relief) * slope


def make_image(
    rng: np.random.Generator,
    nuisances: Nuisances = NUISANCES,
    classes: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Make one synthetic steel image and its defect masks (no JPEG, no files).

    Args:
        rng: Source of randomness; the result is a pure function of its state.
        nuisances: The chance of each defect-free nuisance (:class:`steelseg.surface.Nuisances`).
            They draw from streams of their own, so switching one on or off leaves the steel
            and the defects as they were (except that defects keep out of a dark edge area).
        classes: The defect classes to draw (``()``: a clean image); default: drawn with the
            Kaggle frequencies (:data:`CLASS_COMBOS`).

    Returns:
        ``(image, masks)``: ``image`` is uint8 (256, 1600); ``masks`` maps each class present
        (1..4) to a uint8 0/1 mask of the same shape. Defect-free images give ``{}``. No
        nuisance ever adds to a mask.
    """
    order = ("edge", "rim", "texture", "stains", "scale", "specular", "illumination", "jpeg")
    chance = dict(zip(order, rng.random(len(order))))
    stream = dict(zip(order, rng.spawn(len(order))))

    def happens(name: str) -> bool:
        return bool(chance[name] < getattr(nuisances, name))

    img = surface.background(rng)
    if classes is None:
        weights = np.array([n for _, n in CLASS_COMBOS], float)
        classes = CLASS_COMBOS[int(rng.choice(len(CLASS_COMBOS), p=weights / weights.sum()))][0]
    x_range, beyond = (0, W), None
    if happens("edge"):
        # Beside a wide dark area a defect would be cut to what is left of the sheet, which
        # would shrink the defect areas below Kaggle's: the widest areas are on clean strips.
        widest = surface.EDGE_WIDTH[1] if not classes else surface.EDGE_WIDTH_WITH_DEFECTS
        x_range, beyond = surface.strip_edges(stream["edge"], nuisances.edge_both, widest)
    for name, draw in (
        ("texture", surface.texture),
        ("stains", surface.stains),
        ("scale", surface.mill_scale),
    ):
        if happens(name):
            img = draw(stream[name], img)
    if x_range[1] - x_range[0] < 60:
        classes = ()  # the sheet edge leaves no room for a defect
    occupied = np.zeros((H, W), np.uint8)
    masks = {}
    for cls in classes:
        mask = _place_class(rng, cls, img, occupied, x_range)
        if mask.any():
            masks[cls] = mask
    for name, draw in (("specular", surface.specular), ("illumination", surface.illumination)):
        if happens(name):
            img = draw(stream[name], img)
    if beyond is not None:
        img = surface.darken_beyond_edge(stream["rim"], img, beyond, rim=happens("rim"))
    img = surface.sensor_noise(rng, img)
    if happens("jpeg"):
        img = surface.recompress(stream["jpeg"], img)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks


def _image_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct Kaggle-style file names: 9 hex digits + ``.jpg``."""
    ids: dict[str, None] = {}
    while len(ids) < n:
        ids[f"{int(rng.integers(16**9)):09x}.jpg"] = None
    return list(ids)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    """Write a grey image as a 3-channel JPEG like Kaggle's, replacing any file atomically."""
    ok, data = cv2.imencode(
        ".jpg", cv2.merge([image] * 3), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise OSError(f"JPEG encoding failed for {path}")
    atomic_write_bytes(path, data.tobytes())


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    """Write a CSV under a temporary name, then move it into place in one step."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def generate(
    out: str | Path,
    n_images: int = N_IMAGES,
    seed: int = 0,
    n_test: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a synthetic data set in the Kaggle Severstal layout (see the module docstring).

    The output depends only on ``n_images``, ``n_test`` and ``seed``: the same arguments give
    byte-identical CSVs and identical pixels. Images are written first and the CSVs last, each
    CSV under a temporary name moved into place, so an interrupted run never leaves a CSV
    naming missing images, and ``synth.json`` says ``complete`` last (:func:`is_complete`).
    Processes generating into one folder at once take turns (:func:`steelseg.io.locked`): the
    first writes, the others find the data set complete and reuse it. A folder made by an
    earlier run is updated in place (its images
    that the new data set does not have are deleted, since defect-free images are found by
    listing ``train_images/``); any other non-empty folder is refused, so real data is never
    overwritten.

    Args:
        out: Output folder; created if missing.
        n_images: Number of train images (>= 1).
        seed: Random seed (>= 0).
        n_test: Number of test images (>= 0); default ``max(1, n_images // 10)``.
        progress: Show a tqdm progress bar.

    Returns:
        The output folder.

    Raises:
        ValueError: a count or the seed is out of range.
        FileExistsError: ``out`` is a non-empty folder not made by this generator.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if n_test is None:
        n_test = max(1, n_images // 10)
    if n_test < 0:
        raise ValueError(f"n_test must be >= 0, got {n_test}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out)
    with locked(out, "the synthetic data"):  # parallel jobs on a fresh data root: one writes
        if is_complete(out, n_images, seed, n_test):
            return out  # another process made it while this one waited, or an earlier run
        _generate(out, n_images, seed, n_test, progress)
    return out


def is_complete(out: str | Path, n_images: int, seed: int, n_test: int | None = None) -> bool:
    """Whether ``out`` holds a whole data set made by :func:`generate` with these arguments.

    The marker says ``complete`` only once every image and both CSVs are written, so a run
    killed halfway is never taken for a data set.
    """
    if n_test is None:
        n_test = max(1, n_images // 10)
    out = Path(out)
    marker = _read_marker(out)
    want = {
        "n_images": n_images,
        "n_test": n_test,
        "seed": seed,
        "version": VERSION,
        "complete": True,
    }
    return (
        marker is not None
        and all(marker.get(k) == v for k, v in want.items())
        and (out / "train.csv").is_file()
        and (out / "sample_submission.csv").is_file()
    )


def reuse_or_generate(
    out: str | Path,
    n_images: int | None = None,
    seed: int | None = None,
    n_test: int | None = None,
    progress: bool = True,
) -> tuple[Path, bool]:
    """The data set already in ``out`` when it has every size given (None: any), else one made
    by :func:`generate` (None: its defaults), so that a set is never remade to default sizes
    it was not asked for.

    Returns:
        ``(out, reused)``.
    """
    out = Path(out)
    marker = _read_marker(out) or {}
    asked = {"n_images": n_images, "seed": seed, "n_test": n_test}
    there = {k: marker.get(k) for k in asked}
    if (
        all(isinstance(v, int) for v in there.values())
        and all(v is None or v == there[k] for k, v in asked.items())
        and is_complete(out, **there)
    ):
        return out, True
    n_images = N_IMAGES if n_images is None else n_images
    return generate(out, n_images, seed or 0, n_test, progress), False


def _read_marker(out: Path) -> dict | None:
    """``synth.json`` of ``out`` (None: missing or unreadable)."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _write_marker(out: Path, n_images: int, seed: int, n_test: int, complete: bool) -> None:
    args = {
        "n_images": n_images,
        "n_test": n_test,
        "seed": seed,
        "version": VERSION,
        "nuisances": NUISANCES.as_dict(),
        "complete": complete,
    }
    atomic_write_text(
        out / MARKER, json.dumps({"generator": "steelseg-synth", **args}, indent=2) + "\n"
    )


def _generate(out: Path, n_images: int, seed: int, n_test: int, progress: bool) -> None:
    """The body of :func:`generate`, under its lock."""
    ours = [p for p in out.iterdir() if not p.name.endswith(".tmp")] if out.exists() else []
    if ours and not (out / MARKER).is_file():  # (.tmp: a killed run's marker, not yet written)
        raise FileExistsError(
            f"{out} is not empty and was not made by steelseg-synth "
            f"(no {MARKER}); choose a new or empty folder"
        )
    # Claim the folder first, so that a run interrupted halfway can simply be run again.
    _write_marker(out, n_images, seed, n_test, complete=False)
    train_dir, test_dir = out / "train_images", out / "test_images"
    train_dir.mkdir(exist_ok=True)
    test_dir.mkdir(exist_ok=True)

    # One stream for the names, then one independent stream per image, so that image i is
    # the same whatever the number of images.
    id_seq, image_seq = np.random.SeedSequence(seed).spawn(2)
    ids = _image_ids(np.random.default_rng(id_seq), n_images + n_test)
    train_ids, test_ids = ids[:n_images], ids[n_images:]
    rngs = [np.random.default_rng(s) for s in image_seq.spawn(n_images + n_test)]

    rows = []
    for i, image_id in enumerate(
        tqdm(ids, desc="synthetic images", unit="img", disable=not progress)
    ):
        image, masks = make_image(rngs[i])
        if i < n_images:
            _write_jpeg(train_dir / image_id, image)
            rows += [(image_id, cls, encode(masks[cls])) for cls in sorted(masks)]
        else:
            _write_jpeg(test_dir / image_id, image)
    _write_csv(out / "train.csv", ["ImageId", "ClassId", "EncodedPixels"], sorted(rows))
    _write_csv(
        out / "sample_submission.csv",
        ["ImageId", "EncodedPixels", "ClassId"],
        [(image_id, "1 1", 0) for image_id in sorted(test_ids)],
    )
    # Images of an earlier, larger run would pass for defect-free ones: remove them, and any
    # temporary file an interrupted run left.
    for folder, keep in ((train_dir, set(train_ids)), (test_dir, set(test_ids))):
        for path in folder.iterdir():
            if (path.suffix == ".jpg" or path.name.endswith(".tmp")) and path.name not in keep:
                path.unlink()
    for path in out.glob(".*.tmp"):  # a CSV or marker a killed run was writing
        path.unlink()
    _write_marker(out, n_images, seed, n_test, complete=True)  # the data set is whole
