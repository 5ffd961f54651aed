"""Defect-free steel as the Severstal line cameras see it: the rolled texture and the nuisances.

:mod:`steelseg.synth` draws defects on what this module makes. Real strips are full of marks
that are not defects: the dark area beside the sheet edge with a bright rim where the light
catches the edge, bands of light across the width, oil and water stains, mill scale, rolled
texture of every contrast, specular streaks, JPEG artefacts. A model trained on defects drawn
on a clean, even background learns that "different from the background" means "defect" and
flags them all, so each nuisance appears here with its own probability (:class:`Nuisances`),
and none of them ever gets a mask. Defects may sit on them and keep theirs.

Image axes: (H, W) = (256, 1600), the rolling direction is vertical (along the columns).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from steelseg.rle import SHAPE

H, W = SHAPE


@dataclass(frozen=True)
class Nuisances:
    """The chance (0-1, per image) of each defect-free nuisance; none of them gets a mask.

    The defaults bring the synthetic strips closer to the real Kaggle strips by the distances
    of ``steelseg-synth --compare-to`` (docs/realism.md). Each draw function below documents
    its parameters.

    Attributes:
        edge: The sheet edge in view: the frame beyond it is near-black (:func:`strip_edges`).
        edge_both: Of the images with an edge, the share that shows both edges (a narrow sheet).
        rim: Of the edges, the share with a bright rim where the light catches the edge and a
            rough band of edge texture (:func:`darken_beyond_edge`).
        illumination: Bands of light and a gradient across the width (:func:`illumination`).
        stains: Oil and water stains, soft blobs with a ring (:func:`stains`).
        scale: Patches of mill scale, crisp dark flakes (:func:`mill_scale`).
        texture: Rolled texture at another contrast and with a coarser layer (:func:`texture`).
        specular: Bright streaks along the rolling direction (:func:`specular`).
        jpeg: One earlier JPEG compression at a lower quality (:func:`recompress`).
    """

    edge: float = 0.55
    edge_both: float = 0.1
    rim: float = 0.5
    illumination: float = 0.5
    stains: float = 0.25
    scale: float = 0.15
    texture: float = 0.6
    specular: float = 0.25
    jpeg: float = 0.3

    def __post_init__(self) -> None:
        for f in fields(self):
            p = getattr(self, f.name)
            if not 0 <= p <= 1:
                raise ValueError(f"nuisance {f.name}={p} is not a probability (0-1)")

    @classmethod
    def none(cls) -> Nuisances:
        """No nuisance at all: defects on clean, evenly lit steel."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    @classmethod
    def only(cls, name: str, p: float = 1.0) -> Nuisances:
        """One nuisance with chance ``p``, the others never (for tests and ablations)."""
        names = [f.name for f in fields(cls)]
        if name not in names:
            raise ValueError(f"unknown nuisance {name!r}; choose from {', '.join(names)}")
        return replace(cls.none(), **{name: p})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


NUISANCES = Nuisances()
EDGE_WIDTH = (40, 1400)  # px of dark beyond the edge, log-uniform: a sliver to most of the frame
EDGE_WIDTH_WITH_DEFECTS = 600  # the widest beside defects (so that they keep Kaggle's sizes)
EDGE_MARGIN = 30  # px of steel inside the edge where no defect is placed


def field(
    rng: np.random.Generator,
    small: tuple[int, int],
    shape: tuple[int, int],
    interp: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Smooth random field: white noise of shape ``small`` upsampled to ``shape`` (h, w).

    The ratio ``shape / small`` along each axis is the correlation length, so (4, 1600) over
    a 256x1600 image gives streaks about 64 px long and 1 px wide.
    """
    noise = rng.standard_normal(small, dtype=np.float32)
    return cv2.resize(noise, (shape[1], shape[0]), interpolation=interp)


def white(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Zero-mean unit-variance white noise (float32).

    Uniform over 256 levels rather than Gaussian: drawn as random bytes, several times faster,
    and indistinguishable once blurred or JPEG-compressed.
    """
    noise = np.frombuffer(rng.bytes(shape[0] * shape[1]), np.uint8).reshape(shape)
    return (noise.astype(np.float32) - np.float32(127.5)) * np.float32(math.sqrt(12) / 256)


def background(rng: np.random.Generator) -> np.ndarray:
    """Defect-free rolled-steel texture (float32, grey levels around 60-140).

    Amplitudes are set so that the statistics of the real Kaggle frames are met: std ~23
    over the frame, ~10 in the residual after a 40 px blur, ~6 below 1 px, with the residual
    correlated further along the rolling direction (vertical) than across it.
    """
    # Everything smoother than ~4 px is built at quarter resolution, then upsampled once.
    qh, qw = H // 4, W // 4
    level = rng.uniform(60, 135)  # real strips: steel at grey 58 / 88 / 119 (p10 / 50 / 90)
    # Uneven lighting: a ramp from top to bottom (real frames are often darker at one edge),
    # broad swells across the width, often slanted, and a weaker 2-D unevenness.
    ramp = np.linspace(-1.0, 1.0, qh, dtype=np.float32)[:, None] * rng.uniform(-48, 48)
    slant = rng.uniform(-0.6, 0.6)  # px across per px down
    shift = int(abs(slant) * qh) + 1
    swell = 13.0 * field(rng, (1, 10), (1, qw + 2 * shift), cv2.INTER_CUBIC)[0]
    starts = shift + np.rint(slant * (np.arange(qh) - qh / 2)).astype(int)
    low = level + ramp + sliding_window_view(swell, qw)[starts]
    low += 6.0 * field(rng, (3, 12), (qh, qw), cv2.INTER_CUBIC)
    # Full-height bands 10-50 px wide, a little brighter or darker (different roll passes).
    low += 5.0 * field(rng, (2, W // 25), (qh, qw), cv2.INTER_CUBIC)
    # Mottling a few pixels across.
    low += 2.5 * field(rng, (H // 6, W // 6), (qh, qw), cv2.INTER_CUBIC)
    img = cv2.resize(low, (W, H), interpolation=cv2.INTER_LINEAR)
    # Fine detail, summed at full resolution and blurred once: the blur widens the streaks to
    # the 1-4 px of the real ones and gives the grain its ~1 px correlation, a little longer
    # across than along (as measured on the real frames).
    # Rolling streaks: columns with their own offset that drifts along the height, over ~10
    # and ~60 px.
    streaks = 3.0 * rng.standard_normal((24, W), dtype=np.float32)
    streaks += 4.0 * field(rng, (4, W), (24, W))
    fine = cv2.resize(streaks, (W, H))
    # Where a streak is darkest it often shows as a crisp dark dash (scale pressed in).
    fine += rng.uniform(1, 3) * np.minimum(fine + rng.uniform(10, 16), 0)
    # Stains: crisp-edged darker smears elongated along the rolling direction, with ragged
    # outlines, gathered in some stretches of the strip; none to several per cent of the frame.
    # Unlabelled in Kaggle, so not every dark mark is a defect.
    smear = (
        field(rng, (6, W // 8), (qh, qw), cv2.INTER_CUBIC)
        + 0.4 * field(rng, (16, W // 4), (qh, qw), cv2.INTER_CUBIC)
        + 0.8 * field(rng, (1, 6), (1, qw), cv2.INTER_CUBIC)
    )
    smear = cv2.resize(smear, (W, H))
    fine += (smear > rng.uniform(1.4, 3.0)) * np.float32(-rng.uniform(8, 20))
    # Specks of scale and dust (1-2 px), a few dozen to a thousand per frame, mostly bright.
    n = int(rng.integers(30, 1000))
    fine[rng.integers(0, H, n), rng.integers(0, W, n)] += rng.uniform(40, 150, n) * rng.choice(
        [-0.6, 1.0], n, p=[0.3, 0.7]
    )
    # Grain: 7 grey levels of std after the blur, which divides white noise's std by 0.48.
    fine += (7.0 / 0.48) * white(rng, (H, W))
    img += cv2.GaussianBlur(fine, (0, 0), sigmaX=0.8, sigmaY=0.5)
    return img


def texture(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Rolled texture at another contrast, plus a coarser layer along the rolling direction.

    Real strips range from nearly smooth to coarse (high-pass std 4-10 grey levels, p10-p90).
    Parameters: the fine detail (below ~8 px) scaled by 0.4-1.6; a layer of streaks 2-6 px
    across and 20-60 px along, 2-8 grey levels.
    """
    low = cv2.GaussianBlur(img, (0, 0), 4)
    out = low + (img - low) * np.float32(rng.uniform(0.4, 1.6))
    across, along = rng.uniform(2, 6), rng.uniform(20, 60)
    small = (max(2, int(H / along)), max(2, int(W / across)))
    return out + np.float32(rng.uniform(2, 8)) * field(rng, small, (H, W), cv2.INTER_CUBIC)


def stains(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """1-5 oil or water stains: soft blobs 30-250 px across, 8-35 grey levels brighter or darker,
    half of them with a ring (a dried edge) 2-6 px wide."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    for _ in range(int(rng.integers(1, 6))):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(15, 125), rng.uniform(15, 125)
        angle = rng.uniform(0, math.pi)
        u = ((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)) / rx
        v = (-(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)) / ry
        r = np.sqrt(u * u + v * v) * (1 + 0.15 * field(rng, (4, 6), (H, W), cv2.INTER_CUBIC))
        inside = np.clip((1 - r) / 0.15, 0, 1)  # soft edge, 15% of the radius
        img = img + np.float32(rng.uniform(8, 35) * rng.choice([-1, 1])) * inside
        if rng.random() < 0.5:
            width = rng.uniform(2, 6) / max(rx, ry)
            img = img - np.float32(rng.uniform(8, 25)) * np.exp(-(((r - 1) / width) ** 2))
    return img


def mill_scale(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """A band of mill scale: crisp-edged dark flakes 3-30 px, elongated along the rolling
    direction, covering 10-40% of a stretch 200-1600 px wide, 15-45 grey levels darker."""
    flakes = field(rng, (H // 12, W // 6), (H, W), cv2.INTER_CUBIC) + 0.5 * field(
        rng, (H // 4, W // 2), (H, W)
    )
    cover = rng.uniform(0.1, 0.4)
    mask = flakes > np.quantile(flakes, 1 - cover)
    x0 = int(rng.integers(0, W))
    x1 = min(W, x0 + int(rng.integers(200, W + 1)))
    band = np.zeros(W, np.float32)
    band[x0:x1] = 1
    band = cv2.GaussianBlur(band[None], (0, 0), 20)[0]
    return img - np.float32(rng.uniform(15, 45)) * mask * band[None, :]


def specular(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """1-3 bright streaks along the rolling direction: 2-12 px wide, 40-120 grey levels at
    their brightest (often saturating), slightly slanted, fading in and out along the height."""
    xx = np.arange(W, dtype=np.float32)[None, :]
    yy = np.arange(H, dtype=np.float32)[:, None]
    for _ in range(int(rng.integers(1, 4))):
        x = rng.uniform(0, W) + rng.uniform(-0.05, 0.05) * yy
        sigma = rng.uniform(1, 6)
        along = np.clip(1 + 0.6 * field(rng, (3, 1), (H, 1), cv2.INTER_CUBIC), 0, 1.5)
        img = img + np.float32(rng.uniform(40, 120)) * along * np.exp(-(((xx - x) / sigma) ** 2))
    return img


def illumination(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Light across the width: a gain of 0.6-1.6 made of a linear gradient and 1-4 broad bands
    (100-800 px), multiplying the image."""
    x = np.linspace(-1, 1, W, dtype=np.float32)
    log_gain = rng.uniform(-0.25, 0.25) * x
    for _ in range(int(rng.integers(1, 5))):
        centre, width = rng.uniform(-1, 1), rng.uniform(0.06, 0.5)
        log_gain += rng.uniform(-0.3, 0.35) * np.exp(-(((x - centre) / width) ** 2))
    gain = np.clip(np.exp(log_gain), 0.6, 1.6)
    return img * gain[None, :]


def strip_edges(
    rng: np.random.Generator, both: float, widest: float = EDGE_WIDTH[1]
) -> tuple[tuple[int, int], np.ndarray]:
    """A sheet edge in view: where the steel is in the frame.

    The dark area beyond the edge is :data:`EDGE_WIDTH` px wide, at most ``widest``
    (log-uniform: real strips show anything from a sliver to almost the whole frame), on
    either side, and with chance ``both`` a second, narrower one (40-300 px) on the other
    side. The edge is nearly straight, slightly slanted, with a wobble along the height that is
    sometimes ragged (a torn or burred edge).

    Returns:
        ``((x_lo, x_hi), dist)``: the columns where defects may go, and the signed distance in
        px to the nearest edge (positive beyond it).
    """
    y = np.arange(H, dtype=np.float32)[:, None]
    x = np.arange(W, dtype=np.float32)[None, :]

    def boundary(width: float) -> np.ndarray:
        ragged = rng.uniform(0, 4) * field(rng, (H // 8, 1), (H, 1)) if rng.random() < 0.3 else 0
        return width + rng.uniform(-4, 4) * y / H + 1.5 * field(rng, (6, 1), (H, 1)) + ragged

    width = float(np.exp(rng.uniform(math.log(EDGE_WIDTH[0]), math.log(widest))))
    other = float(rng.uniform(40, 300)) if rng.random() < both else 0.0
    other = min(other, max(0.0, W - width - 200))  # keep at least ~200 px of steel
    left_first = rng.random() < 0.5
    left, right = (width, other) if left_first else (other, width)
    dist = np.full((H, W), -np.inf, np.float32)
    if left:
        dist = np.maximum(dist, boundary(left) - x)
    if right:
        dist = np.maximum(dist, x - (W - 1 - boundary(right)))
    x_lo = int(left) + EDGE_MARGIN if left else 0
    x_hi = W - int(right) - EDGE_MARGIN if right else W
    if x_hi - x_lo < 60:  # too little steel for a defect: keep the sheet, place none
        x_lo, x_hi = 0, 0
    return (x_lo, x_hi), dist


def darken_beyond_edge(
    rng: np.random.Generator, img: np.ndarray, dist: np.ndarray, rim: bool
) -> np.ndarray:
    """Blacken the frame beyond the sheet edge, as the real frames look there.

    The camera sees near-black (grey 5-15) with a glow of scattered light fading over a few
    tens of px; the sheet's own margin, 10-30 px wide, is darker than the rest of the steel.
    With ``rim``, the light catches the edge: a bright line 1-4 px wide, 30-110 grey levels
    above the steel, and a rough band of coarse texture 15-80 px wide inside it.
    """
    steel = np.clip(0.5 - dist / 2, 0, 1)  # a 2 px transition
    inside = np.maximum(-dist, 0)
    margin = rng.uniform(15, 45) * np.exp(-inside / rng.uniform(8, 30))
    if rim:
        margin -= rng.uniform(30, 110) * np.exp(-(((inside - 1) / rng.uniform(1, 4)) ** 2))
        rough = field(rng, (H // 3, W // 3), (H, W)) * rng.uniform(8, 25)
        img = img + rough * np.exp(-inside / rng.uniform(15, 80))
    glow = 5.0 + rng.uniform(3, 15) * np.exp(-np.maximum(dist, 0) / 25)
    return (img - margin) * steel + glow * (1 - steel)


def recompress(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """One earlier JPEG compression at quality 40-85 (the Kaggle files are then saved at 95)."""
    grey = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 86))])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 grey image
        return img
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE).astype(np.float32)


def sensor_noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Sensor noise that grows with brightness (photon noise): std ~4 grey levels on the steel,
    ~1 in the dark area beyond the edge."""
    return img + 0.35 * np.sqrt(np.maximum(img, 0)) * white(rng, (H, W))
