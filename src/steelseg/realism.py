"""How close synthetic steel images are to real strips: ``realism.json`` and ``realism.html``.

:func:`compare` sets a synthetic data set (:mod:`steelseg.synth`, Kaggle layout) against a folder
of real strips and gives each comparison as one distance, 0 for sets alike in that respect:

* ``grey_histogram``: Wasserstein-1 (earth mover's) distance between the grey-level
  distributions of all pixels, in grey levels;
* ``dark_share``: W1 between the per-image shares of pixels darker than :data:`DARK_LEVEL` (the
  black beside a strip end), as a share of the frame;
* ``spectrum_along`` / ``spectrum_across``: the mean ``|log10(P_synthetic / P_real)|`` of the
  texture's power spectra down the columns (the rolling direction) and along the rows, in
  decades;
* ``defect_area_class_1`` ... ``_4``: W1 between the log10 defect areas of the images with that
  class, in decades (needs the real strips' labels);

and shows thumbnails of both sets side by side. With a previous ``realism.json`` as baseline, each
distance is shown beside its value before. The page is self-contained, its plots embedded as in
:mod:`steelseg.report`. See docs/realism.md.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy.stats import wasserstein_distance

from steelseg import rle
from steelseg.io import atomic_write_text, check_out_folder, images_in, json_ready, read_grey
from steelseg.layouts import KAGGLE_CSV, KAGGLE_IMAGES
from steelseg.report import figure, figure_uri, page, png_data_uri, write_page

# The real strips show the black beside a strip end at grey 0-15 (88 Kaggle test strips: a peak
# at 1, the histogram's valley at 15-19) and the darkest real steel from about 20 up.
DARK_LEVEL = 16
DARK_IMAGE = 0.01  # an image "has a dark area" when at least 1% of its pixels are dark
WINDOW = 256  # px per spectrum segment: a frame's height, used across too so both share bins
HIGH_PASS = 16.0  # sigma (px) of the blur subtracted first: removes the lighting, keeps texture
N_THUMBS = 6  # strips shown per side
THUMB_WIDTH = 800  # px: half of a Severstal frame's width
REPORT_JSON, REPORT_HTML = "realism.json", "realism.html"
CLASSES = range(1, rle.N_CLASSES + 1)
SIDES = ("synthetic", "real")

MEANINGS = {
    "grey_histogram": (
        "grey-level histogram",
        "grey levels",
        "Wasserstein-1 (earth mover's) distance between the grey-level distributions of all "
        "pixels, each image weighing the same: how many grey levels, on average, the synthetic "
        "pixels must move to match the real ones",
    ),
    "dark_share": (
        "dark-area share",
        "share of the frame",
        f"Wasserstein-1 distance between the per-image shares of pixels darker than grey "
        f"{DARK_LEVEL} (the black beside a strip end): by how much of the frame, on average, a "
        "synthetic image's dark share must change to match the real ones (0.1 = 10% of the frame)",
    ),
    "spectrum_along": (
        "texture along the strip",
        "decades",
        "mean over frequencies (1/256 to 1/2 cycle per px) of |log10(P_synthetic / P_real)|, P "
        "the power spectrum down the columns (the rolling direction) of the high-pass residual "
        "of steel pixels: 0.3 = a factor 2 in power, on average",
    ),
    "spectrum_across": (
        "texture across the strip",
        "decades",
        "mean over frequencies (1/256 to 1/2 cycle per px) of |log10(P_synthetic / P_real)|, P "
        "the power spectrum along the rows (across the rolling direction) of the high-pass "
        "residual of steel pixels: 0.3 = a factor 2 in power, on average",
    ),
    **{
        f"defect_area_class_{c}": (
            f"defect area, class {c}",
            "decades",
            f"Wasserstein-1 distance between the log10 areas (px) of class {c} in the images "
            "that have it: how many decades, on average, the synthetic areas must move to match "
            "the real ones (0.3 = a factor 2)",
        )
        for c in CLASSES
    },
}


# ----------------------------------------------------------------------------- reading
def _sample(names: Sequence[Any], n: int) -> list:
    """Up to ``n`` of ``names``, spread evenly over them (the same ones every time)."""
    if len(names) <= n:
        return list(names)
    return [names[i] for i in np.linspace(0, len(names) - 1, n).round().astype(int)]


def _real_images(real_dir: Path) -> list[Path]:
    """The image files of the real strips' folder.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: it holds no images.
    """
    real_dir = Path(real_dir)
    if not real_dir.is_dir():
        what = "is a file, not a folder" if real_dir.exists() else "does not exist"
        raise FileNotFoundError(
            f"folder of real strips {real_dir} {what}; give a folder of .jpg/.png images"
        )
    images = images_in(real_dir)
    if not images:
        raise ValueError(f"{real_dir} holds no images (.jpg, .png, ...); give a folder of strips")
    return images


def read_areas(path: str | os.PathLike, images: Sequence[str] = ()) -> pd.DataFrame:
    """Per-image defect area of each class, from a labels file.

    Args:
        path: A Kaggle ``train.csv`` in either layout (see :func:`steelseg.rle.read_annotations`)
            or an index CSV with ``image_id`` and ``area_class_1`` ... ``area_class_4`` (pixels).
        images: The names of the images the labels describe; those without rows are defect-free
            (the current Kaggle layout lists defective images only). Ignored when the labels
            name none of them.

    Returns:
        Pixels, one row per image (index: image name), one column per class (1..4).
        ``attrs["clean_listed"]``: whether defect-free images are among the rows (False for
        the current layout alone, which lists defective images only).

    Raises:
        FileNotFoundError: no such file.
        ValueError: neither layout, or a bad row (the message names the line).
    """
    hint = "it needs Kaggle's train.csv columns, or image_id and area_class_1..4"
    head = rle.read_csv_text(path, "labels CSV", hint)
    columns = [f"area_class_{c}" for c in CLASSES]
    name = Path(path).name
    if {"image_id", *columns} <= set(head.columns):
        areas = head.set_index("image_id")[columns].apply(pd.to_numeric, errors="coerce")
        bad = ~(areas >= 0).all(axis=1)  # NaN (not a number) or negative
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise ValueError(f"{name} line {line}: an area_class_* value is not a count of pixels")
        areas.columns = list(CLASSES)
        areas.attrs["clean_listed"] = True
        return areas.astype(np.int64)
    ann = rle.read_annotations(path)  # either Kaggle layout; its error names both
    ids = list(ann.attrs["image_ids"])
    named = set(ids)
    extra = [i for i in images if i not in named] if named & set(images) else []
    areas = pd.DataFrame(0, index=pd.Index(ids + extra), columns=list(CLASSES), dtype=np.int64)
    for iid, cid, enc in ann[["ImageId", "ClassId", "EncodedPixels"]].itertuples(index=False):
        areas.loc[iid, cid] = rle.area(enc)
    areas.attrs["clean_listed"] = "ImageId_ClassId" in head.columns or bool(extra)
    return areas


def _read_baseline(path: str | os.PathLike) -> dict:
    """A previous ``realism.json``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a realism.json.
    """
    try:
        result = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"baseline {path} does not exist; give a realism.json") from None
    except (OSError, ValueError) as e:
        raise ValueError(
            f"baseline {path} is not readable JSON ({e}); give a realism.json"
        ) from None
    if not isinstance(result, dict) or not isinstance(result.get("distances"), dict):
        raise ValueError(f"baseline {path} has no 'distances'; give a realism.json this wrote")
    return result


def check_inputs(
    real_dir: str | os.PathLike,
    real_labels: str | os.PathLike | None = None,
    baseline: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> None:
    """Raise, before anything is made, on what :func:`compare` would refuse: the real strips'
    folder, their labels, the baseline, the report folder.

    Raises:
        FileNotFoundError, ValueError: as :func:`compare`.
    """
    images = _real_images(Path(real_dir))
    if real_labels is not None:
        read_areas(real_labels, [p.name for p in images])
    if baseline is not None:
        _read_baseline(baseline)
    if out is not None:
        check_out_folder(Path(out), "--report-dir")


# ----------------------------------------------------------------------------- measuring
def _segments(residual: np.ndarray, near_dark: np.ndarray, across: bool) -> np.ndarray:
    """The :data:`WINDOW`-long segments of ``residual`` down the columns (or, ``across``,
    along the rows) that touch no dark area: (n, WINDOW)."""
    if across:
        residual, near_dark = residual.T, near_dark.T
    h, w = residual.shape
    k = h // WINDOW  # segments per column
    segs = residual[: k * WINDOW].reshape(k, WINDOW, w).transpose(0, 2, 1).reshape(-1, WINDOW)
    dark = near_dark[: k * WINDOW].reshape(k, WINDOW, w).any(axis=1).reshape(-1)
    return segs[~dark]


def _power(segments: np.ndarray) -> np.ndarray:
    """Summed power spectra of mean-removed, Hann-windowed segments: (WINDOW // 2 + 1,)."""
    if not len(segments):
        return np.zeros(WINDOW // 2 + 1)
    hann = np.hanning(WINDOW).astype(np.float32)
    x = (segments - segments.mean(axis=1, keepdims=True)) * hann
    # per segment, a power spectral density in grey levels^2 per (cycle/px)
    return (np.abs(np.fft.rfft(x, axis=1)) ** 2).sum(axis=0) / float((hann**2).sum())


def _measure(paths: Sequence[Path]) -> dict[str, Any]:
    """Every per-image number of a set of strips: its mean grey-level histogram, dark shares,
    texture spectra and thumbnails."""
    hist = np.zeros(256)
    dark_shares = []
    power = {"along": np.zeros(WINDOW // 2 + 1), "across": np.zeros(WINDOW // 2 + 1)}
    n_segments = {"along": 0, "across": 0}
    reach = np.ones((6 * int(HIGH_PASS) + 1,) * 2, np.uint8)  # where the blur sees dark pixels
    thumbs = {p.name: None for p in _sample(paths, N_THUMBS)}
    for path in paths:
        img = read_grey(path)
        hist += np.bincount(img.ravel(), minlength=256) / img.size
        dark = (img < DARK_LEVEL).astype(np.uint8)
        dark_shares.append(float(dark.mean()))
        grey = img.astype(np.float32)
        residual = grey - cv2.GaussianBlur(grey, (0, 0), HIGH_PASS)
        near_dark = cv2.dilate(dark, reach) > 0
        for direction in power:
            segs = _segments(residual, near_dark, across=direction == "across")
            power[direction] += _power(segs)
            n_segments[direction] += len(segs)
        if path.name in thumbs:
            height = max(1, round(img.shape[0] * THUMB_WIDTH / img.shape[1]))
            thumbs[path.name] = cv2.resize(img, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
    return {
        "hist": hist / len(paths),
        "dark": np.array(dark_shares),
        "power": {d: power[d] / max(n_segments[d], 1) for d in power},
        "segments": n_segments,
        "thumbs": thumbs,
    }


def _percentile(hist: np.ndarray, q: float) -> int:
    """The grey level below which a share ``q`` of a histogram's pixels lie."""
    return int(np.searchsorted(np.cumsum(hist), q * hist.sum()))


def _entry(name: str, value: float | None, **rest: Any) -> dict[str, Any]:
    label, unit, meaning = MEANINGS[name]
    return {"label": label, "value": value, "unit": unit, "meaning": meaning, **rest}


def _grey_entry(synth: Mapping, real: Mapping) -> dict[str, Any]:
    levels = np.arange(256)

    def side(m: Mapping) -> dict[str, Any]:
        h = m["hist"]
        steel = h * (levels >= DARK_LEVEL)
        return {
            "mean": float(levels @ h),
            **{f"p{q}": _percentile(h, q / 100) for q in (1, 5, 50, 95, 99)},
            "steel_median": _percentile(steel, 0.5),
            "histogram": h.tolist(),
        }

    value = wasserstein_distance(levels, levels, synth["hist"], real["hist"])
    return _entry("grey_histogram", float(value), synthetic=side(synth), real=side(real))


def _dark_entry(synth: Mapping, real: Mapping) -> dict[str, Any]:
    def side(shares: np.ndarray) -> dict[str, Any]:
        return {
            "mean": float(shares.mean()),
            "images_with_dark": float((shares >= DARK_IMAGE).mean()),
            "p90": float(np.percentile(shares, 90)),
            "per_image": shares.round(4).tolist(),
        }

    value = wasserstein_distance(synth["dark"], real["dark"])
    return _entry(
        "dark_share",
        float(value),
        threshold=DARK_LEVEL,
        synthetic=side(synth["dark"]),
        real=side(real["dark"]),
    )


def _spectrum_entry(direction: str, synth: Mapping, real: Mapping) -> dict[str, Any]:
    ps, pr = synth["power"][direction][1:], real["power"][direction][1:]  # no DC: mean removed
    sides = {
        "synthetic": {"segments": synth["segments"][direction], "power": ps.tolist()},
        "real": {"segments": real["segments"][direction], "power": pr.tolist()},
    }
    frequency = (np.arange(1, WINDOW // 2 + 1) / WINDOW).tolist()  # cycles per px
    if not (synth["segments"][direction] and real["segments"][direction]):
        note = f"not measured: no {WINDOW}-px run of steel without dark pixels on one side"
        return _entry(f"spectrum_{direction}", None, note=note, frequency=frequency, **sides)
    value = float(np.mean(np.abs(np.log10(ps / pr))))
    return _entry(f"spectrum_{direction}", value, frequency=frequency, **sides)


def _area_side(areas: pd.DataFrame, c: int) -> dict[str, Any]:
    px = areas[c][areas[c] > 0].to_numpy()
    share = float(len(px) / len(areas)) if areas.attrs["clean_listed"] else None
    quantiles = np.percentile(px, [10, 50, 90]).round().astype(int).tolist() if len(px) else []
    return {"images": len(px), "share": share, **dict(zip(("p10", "p50", "p90"), quantiles))}


def _area_entries(synth: pd.DataFrame, real: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    out = {}
    for c in CLASSES:
        name = f"defect_area_class_{c}"
        if real is None:
            out[name] = _entry(name, None, note="not measured: no real labels given")
            continue
        s, r = (np.log10(a[c][a[c] > 0].to_numpy(float)) for a in (synth, real))
        sides = {"synthetic": _area_side(synth, c), "real": _area_side(real, c)}
        if len(s) and len(r):
            out[name] = _entry(name, float(wasserstein_distance(s, r)), **sides)
        else:
            note = f"not measured: no image with class {c} on one side"
            out[name] = _entry(name, None, note=note, **sides)
    return out


def _labels_side(areas: pd.DataFrame, source: Path) -> dict[str, Any]:
    clean = float((areas.sum(axis=1) == 0).mean()) if areas.attrs["clean_listed"] else None
    return {"file": str(source), "images": len(areas), "clean_share": clean}


# ----------------------------------------------------------------------------- the report
def compare(
    synth_root: str | os.PathLike,
    real_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    real_labels: str | os.PathLike | None = None,
    max_images: int = 200,
    baseline: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Compare a synthetic data set with real strips; write ``realism.json`` and ``.html``.

    Args:
        synth_root: A synthetic data set in the Kaggle layout (``train_images/``,
            ``train.csv``), as :func:`steelseg.synth.generate` writes it.
        real_dir: A folder of real strips (.jpg, .png, ...; any size; grey, or colour read as
            grey). The rolling direction must be vertical, as in the Severstal frames.
        out: The folder to write into (created); None: write nothing.
        real_labels: The real strips' labels, for the defect areas: a Kaggle ``train.csv`` in
            either layout or an index CSV with ``image_id`` and ``area_class_1..4`` (see
            :func:`read_areas`); None: the areas are not measured, and the report says so.
        max_images: The most images read from each side, spread evenly over the sorted names
            (``images`` of ``of`` in the result).
        baseline: A previous ``realism.json``: its distances are shown as "before".

    Returns:
        The content of ``realism.json``: ``distances`` maps each comparison to its ``value``
        (None when not measured, with a ``note``), ``unit``, ``meaning``, the summaries of each
        side and, with a baseline, ``before`` and ``change``.

    Raises:
        FileNotFoundError: a folder or file is missing.
        ValueError: no images, an unreadable image, bad labels or baseline, or ``out`` is a file.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    synth_root, real_dir = Path(synth_root), Path(real_dir)
    real_paths = _real_images(real_dir)
    synth_dir = synth_root / KAGGLE_IMAGES
    if not (synth_dir.is_dir() and (synth_root / KAGGLE_CSV).is_file()):
        raise FileNotFoundError(
            f"{synth_root} is not a synthetic data set (no {KAGGLE_IMAGES}/ and {KAGGLE_CSV}); "
            "make one with steelseg-synth --out DIR"
        )
    synth_paths = images_in(synth_dir)
    if not synth_paths:
        raise ValueError(f"{synth_dir} holds no images; run steelseg-synth --out {synth_root}")
    synth_areas = read_areas(synth_root / KAGGLE_CSV, [p.name for p in synth_paths])
    real_areas = None
    if real_labels is not None:
        real_areas = read_areas(real_labels, [p.name for p in real_paths])
    before = _read_baseline(baseline) if baseline is not None else None
    if out is not None:
        check_out_folder(Path(out), "--report-dir")

    counts = {"synthetic": len(synth_paths), "real": len(real_paths)}
    synth_paths, real_paths = _sample(synth_paths, max_images), _sample(real_paths, max_images)
    s, r = _measure(synth_paths), _measure(real_paths)
    distances = {
        "grey_histogram": _grey_entry(s, r),
        "dark_share": _dark_entry(s, r),
        "spectrum_along": _spectrum_entry("along", s, r),
        "spectrum_across": _spectrum_entry("across", s, r),
        **_area_entries(synth_areas, real_areas),
    }
    if before is not None:
        for name, entry in distances.items():
            old = before["distances"].get(name, {}).get("value")
            entry["before"] = old
            new = entry["value"]
            entry["change"] = None if old is None or new is None else new - old
    result = json_ready(
        {
            "synthetic": {
                "root": synth_root,
                "images": len(synth_paths),
                "of": counts["synthetic"],
            },
            "real": {"folder": real_dir, "images": len(real_paths), "of": counts["real"]},
            "labels": {
                "synthetic": _labels_side(synth_areas, synth_root / KAGGLE_CSV),
                "real": None if real_areas is None else _labels_side(real_areas, real_labels),
            },
            "settings": {
                "max_images": max_images,
                "dark_level": DARK_LEVEL,
                "dark_image_share": DARK_IMAGE,
                "spectrum_window": WINDOW,
                "high_pass_sigma": HIGH_PASS,
            },
            "baseline": baseline,
            "thumbnails": {"synthetic": list(s["thumbs"]), "real": list(r["thumbs"])},
            "distances": distances,
        }
    )
    if out is not None:
        out = Path(out)
        write_page(
            out / REPORT_HTML, _page(result, s["thumbs"], r["thumbs"], (synth_areas, real_areas))
        )
        atomic_write_text(out / REPORT_JSON, json.dumps(result, indent=1) + "\n")
    return result


def format_table(result: Mapping[str, Any]) -> str:
    """The distances as a plain-text table (for the terminal)."""
    distances = result["distances"]
    has_before = "before" in next(iter(distances.values()))
    lines = []
    for entry in distances.values():
        line = f"{entry['label']:<26}"
        if entry["value"] is None:
            lines.append(f"{line}{'-':>9}  {entry['note']}")
            continue
        line += f"{entry['value']:>9.3f}"
        if has_before:
            old, change = entry["before"], entry["change"]
            line += f"{'' if old is None else f'{old:.3f}':>9}"
            line += f"{'' if change is None else f'{change:+.3f}':>9}"
        lines.append(f"{line}  {entry['unit']}")
    head = f"{'comparison':<26}{'distance':>9}" + (
        f"{'before':>9}{'change':>9}" if has_before else ""
    )
    return "\n".join([f"{head}  unit", *lines])


# ----------------------------------------------------------------------------- the page
COLOURS = {"synthetic": "#d97706", "real": "#1e293b"}


def _grey_plot(entry: Mapping) -> str:
    fig = figure(6.2, 3.2)
    ax = fig.add_subplot()
    for side in SIDES:
        ax.plot(np.array(entry[side]["histogram"]) * 100, color=COLOURS[side], label=side)
    ax.axvline(DARK_LEVEL, color="0.5", ls=":", lw=1, label=f"dark below {DARK_LEVEL}")
    ax.set_yscale("log")
    ax.set_xlim(0, 255)
    ax.set_xlabel("grey level")
    ax.set_ylabel("% of pixels (log scale)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return figure_uri(fig)


def _dark_plot(entry: Mapping) -> str:
    fig = figure(6.2, 3.2)
    ax = fig.add_subplot()
    for side in SIDES:
        shares = np.sort(entry[side]["per_image"])
        ax.step(
            shares,
            np.arange(1, len(shares) + 1) / len(shares),
            where="post",
            color=COLOURS[side],
            label=side,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"share of the frame darker than grey {DARK_LEVEL}")
    ax.set_ylabel("share of images at or below")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return figure_uri(fig)


def _spectrum_plot(along: Mapping, across: Mapping) -> str:
    fig = figure(12, 3.4)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, entry, title in (
        (axes[0], along, "along the strip (down the columns)"),
        (axes[1], across, "across the strip (along the rows)"),
    ):
        for side in SIDES:
            if entry[side]["segments"]:
                ax.loglog(
                    entry["frequency"],
                    entry[side]["power"],
                    color=COLOURS[side],
                    label=f"{side} ({entry[side]['segments']:,} segments)",
                )
        value = "not measured" if entry["value"] is None else f"{entry['value']:.3f} decades"
        ax.set_title(f"{title}: {value}", fontsize=10)
        ax.set_xlabel("frequency (cycles per px)")
        ax.grid(alpha=0.3, which="both")
        if ax.has_data():
            ax.legend(fontsize=8, frameon=False)
    axes[0].set_ylabel("power of the high-pass residual")
    return figure_uri(fig)


def _area_plot(areas: tuple[pd.DataFrame, pd.DataFrame], distances: Mapping) -> str:
    fig = figure(12, 5.6)
    axes = fig.subplots(2, 2).ravel()
    bins = np.linspace(1, np.log10(256 * 1600), 31)
    for ax, c in zip(axes, CLASSES):
        for side, a in zip(SIDES, areas):
            logs = np.log10(a[c][a[c] > 0].to_numpy(float))
            if len(logs):
                weights = np.full(len(logs), 1 / len(logs))
                ax.hist(
                    logs,
                    bins,
                    weights=weights,
                    histtype="step",
                    lw=1.5,
                    color=COLOURS[side],
                    label=f"{side} ({len(logs):,} images)",
                )
        entry = distances[f"defect_area_class_{c}"]
        value = "not measured" if entry["value"] is None else f"{entry['value']:.3f} decades"
        ax.set_title(f"class {c}: {value}", fontsize=10)
        ax.set_xlabel("log10 defect area (px) per image")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8, frameon=False)
    fig.subplots_adjust(hspace=0.5)
    return figure_uri(fig)


def _number(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _distance_table(distances: Mapping[str, Mapping]) -> str:
    has_before = "before" in next(iter(distances.values()))
    head = "<th>before</th><th>change</th>" if has_before else ""
    rows = []
    for entry in distances.values():
        value = _number(entry["value"]) if entry["value"] is not None else "not measured"
        cells = ""
        if has_before:
            change = entry["change"]
            # lower is closer to the real strips: a fall is good (green), a rise bad (red)
            tone = (
                "same" if change is None or abs(change) < 5e-4 else "up" if change < 0 else "down"
            )
            shown = "" if change is None else f"{change:+.3f}"
            cells = (
                f"<td class=num>{_number(entry['before'])}</td>"
                f"<td class=num><span class={tone}>{shown}</span></td>"
            )
        meaning = entry.get("note") or entry["meaning"]
        rows.append(
            f"<tr><td>{html.escape(entry['label'])}</td><td class='num strong'>{value}</td>"
            f"{cells}<td>{html.escape(entry['unit'])}</td><td class=meaning>"
            f"{html.escape(meaning)}</td></tr>"
        )
    return (
        "<table class=metrics><thead><tr><th>comparison</th><th>distance</th>"
        f"{head}<th>unit</th><th>meaning</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _summary_table(rows: Sequence[tuple[str, Any, Any]]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(label)}</td><td class=num>{html.escape(str(s))}</td>"
        f"<td class=num>{html.escape(str(r))}</td></tr>"
        for label, s, r in rows
    )
    return (
        "<table class=metrics><thead><tr><th></th><th>synthetic</th><th>real</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _pct(v: float | None) -> str:
    return "unknown" if v is None else f"{100 * v:.1f}%"


def _area_section(result: Mapping, areas: tuple[pd.DataFrame, pd.DataFrame | None]) -> str:
    if areas[1] is None:
        return "<p class=note>Not measured: no real labels given (--real-labels).</p>"
    labels = result["labels"]
    rows = [
        ("labelled images", labels["synthetic"]["images"], labels["real"]["images"]),
        ("clean (no defect)", *(_pct(labels[s]["clean_share"]) for s in SIDES)),
    ]
    for c in CLASSES:
        e = result["distances"][f"defect_area_class_{c}"]
        rows.append((f"with class {c}", *(_pct(e[s]["share"]) for s in SIDES)))
        rows.append(
            (
                f"class {c} area p10 / p50 / p90 (px)",
                *(" / ".join(str(e[s].get(k, "-")) for k in ("p10", "p50", "p90")) for s in SIDES),
            )
        )
    uri = _area_plot(areas, result["distances"])
    return f'{_summary_table(rows)}<img alt="defect areas" src="{uri}">'


def _figures(pictures: Mapping[str, np.ndarray], side: str) -> list[str]:
    return [
        f'<figure><img alt="{html.escape(name)}" src="{png_data_uri(img)}">'
        f"<figcaption>{side}: {html.escape(name)}</figcaption></figure>"
        for name, img in pictures.items()
    ]


PAGE_CSS = """
td.meaning{color:var(--mute);font-size:13px;max-width:620px}
.side{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
.side img{width:560px;max-width:100%;flex:none}.side table{flex:1 1 300px}
.pairs{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.pairs figure{margin:0}.pairs figcaption{font-size:12px;color:var(--mute)}
"""


def _page(
    result: Mapping[str, Any],
    synth_thumbs: Mapping[str, np.ndarray],
    real_thumbs: Mapping[str, np.ndarray],
    areas: tuple[pd.DataFrame, pd.DataFrame | None],
) -> str:
    """The report page as one HTML string."""
    d = result["distances"]
    grey, dark = d["grey_histogram"], d["dark_share"]
    title = f"Realism: {result['synthetic']['root']} against {result['real']['folder']}"
    counts = " and ".join(f"{result[s]['images']} of {result[s]['of']} {s}" for s in SIDES)
    counts += " strips"
    if result["baseline"]:
        counts += f" &middot; before: {html.escape(result['baseline'])}"
    grey_rows = [
        (k, grey["synthetic"][k], grey["real"][k])
        for k in ("p1", "p5", "p50", "p95", "p99", "steel_median")
    ]
    grey_rows.insert(0, ("mean", *(f"{grey[s]['mean']:.1f}" for s in SIDES)))
    dark_rows = [
        ("mean dark share", *(_pct(dark[s]["mean"]) for s in SIDES)),
        (
            f"images with a dark area (>= {DARK_IMAGE:.0%})",
            *(_pct(dark[s]["images_with_dark"]) for s in SIDES),
        ),
        ("90th percentile of the dark share", *(_pct(dark[s]["p90"]) for s in SIDES)),
    ]
    pairs = "".join(
        a + b
        for a, b in zip_longest(
            _figures(synth_thumbs, "synthetic"), _figures(real_thumbs, "real"), fillvalue="<i></i>"
        )
    )
    body = f"""<section><h2>Distances (0: alike; lower is closer to the real strips)</h2>
{_distance_table(d)}</section>
<section><h2>Grey levels</h2><p class=note>Each image's histogram, averaged. Percentiles in grey
levels; steel median: the median of the pixels at grey {DARK_LEVEL} and above.</p>
<div class=side><img alt="grey-level histograms" src="{_grey_plot(grey)}">
{_summary_table(grey_rows)}</div></section>
<section><h2>Dark area</h2><p class=note>Pixels darker than grey {DARK_LEVEL}: the black beside
a strip end. The curves give, for each dark share, the share of images at or below it.</p>
<div class=side><img alt="dark shares" src="{_dark_plot(dark)}">
{_summary_table(dark_rows)}</div></section>
<section><h2>Texture spectra</h2><p class=note>Power spectra of the image minus its blur
(sigma {HIGH_PASS:g} px), in {WINDOW}-px segments down the columns (the rolling direction) and
along the rows, each segment clear of dark pixels by {3 * HIGH_PASS:g} px; averaged over the
segments.</p>
<img alt="texture spectra" src="{_spectrum_plot(d["spectrum_along"], d["spectrum_across"])}">
</section>
<section><h2>Defect areas per class</h2><p class=note>Per image, the pixels of each class; the
synthetic side from its train.csv, the real side from the labels given (not necessarily of the
strips compared above). Shares are of all labelled images.</p>
{_area_section(result, areas)}</section>
<section><h2>Strips side by side</h2><p class=note>Synthetic (left) and real (right), spread
evenly over each set.</p><div class=pairs>{pairs}</div></section>
"""
    return page(title, counts, body, "realism.json", css=PAGE_CSS)
