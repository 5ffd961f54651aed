"""A labelled data set at a glance: ``steelseg-data report DIR --out OUT``.

:func:`report_dataset` reads a data folder in either layout (Kaggle: ``train.csv`` +
``train_images/``; folder: ``images/`` + ``masks/``, see :mod:`steelseg.layouts`) and writes
``OUT/data_report.json`` (every number) and ``OUT/data_report.html`` (one self-contained page,
as :mod:`steelseg.report`'s): the image sizes; per class, how many images show it, its defects
(8-connected components) and their areas as a histogram; the share of images without a defect;
the masks that touch the image border (a defect cut by the frame); the near-duplicate groups
(:mod:`steelseg.duplicates`); and, for a split (a ``split_file`` of ``ImageId,split``, e.g. a
prepared ``split.csv``), the groups it puts on more than one side and how many val/test images
it leaks (each has a near-duplicate in train). ``data.group_split=true`` prepares a split
without that leak.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from steelseg import duplicates, layouts, rle
from steelseg.coco import CONNECTIVITY
from steelseg.io import atomic_write_text, json_ready, read_grey
from steelseg.prepare import SPLITS, read_split_file, resolve_split_file
from steelseg.report import (
    class_text,
    figure,
    figure_uri,
    fmt_number,
    page,
    png_data_uri,
    write_page,
)

JSON_NAME, HTML_NAME = "data_report.json", "data_report.html"
AREA_BINS_PER_DECADE = 4  # the area histograms' log-spaced bins
MAX_GROUPS_SHOWN = 40  # near-duplicate groups drawn in the HTML page (all are in the JSON)
THUMB_HEIGHT = 96  # pixels: the pictures of near-duplicate groups


# ----------------------------------------------------------------------------- numbers
def _mask_stats(rles: Sequence[str], shape: tuple[int, int]) -> list[tuple[list[int], bool]]:
    """Per class: the areas of its defects (8-connected components) and whether any touches
    the image border."""
    out = []
    for s in rles:
        if not s:
            out.append(([], False))
            continue
        mask = rle.decode(s, shape)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=CONNECTIVITY)
        border = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        out.append((stats[1:n, cv2.CC_STAT_AREA].tolist(), border))
    return out


def _area_histogram(areas: Sequence[int], largest: int) -> dict[str, list]:
    """Counts of defect areas in log-spaced bins from 1 pixel to ``largest``."""
    decades = max(1.0, np.log10(max(largest, 10)))
    edges = np.logspace(0, decades, int(np.ceil(decades * AREA_BINS_PER_DECADE)) + 1)
    counts, _ = np.histogram(np.asarray(areas, float), bins=edges)
    return {"edges": [round(float(e), 1) for e in edges], "counts": counts.tolist()}


def read_split_sides(split_file: str | os.PathLike) -> dict[str, str]:
    """{ImageId: side} of a split file (``ImageId,split``: ``data.split_file``, a packaged name
    such as ``reference``, a prepared ``split.csv`` or its folder).

    Raises:
        FileNotFoundError: no such file.
        ValueError: as :func:`steelseg.prepare.read_split_file`.
    """
    path = Path(split_file)
    path = path / "split.csv" if path.is_dir() else resolve_split_file(split_file)
    spec = read_split_file(path)
    return dict(zip(spec["ImageId"], spec["split"]))


def dataset_report(
    root: str | os.PathLike,
    split_file: str | os.PathLike | None = None,
    threshold: int = duplicates.HASH_THRESHOLD,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Every number of the data report (``data_report.json``).

    Args:
        root: A Kaggle-layout or folder-layout data folder.
        split_file: A split to check for near-duplicate leaks (see :func:`read_split_sides`),
            or None.
        threshold: The near-duplicate hash distance (:data:`steelseg.duplicates.HASH_THRESHOLD`).
        skip_bad: Leave out images without a mask (and masks without an image) with a warning
            instead of failing.

    Returns:
        ``images``, ``layout``, ``sizes``, ``classes`` (per class: its id and name, images, defects, pixels,
        border images, area histogram), ``empty``, ``border``, ``duplicates`` and ``split``
        (None without a ``split_file``).
    """
    root = Path(root)
    labels = layouts.image_labels(root, skip_bad, any_class=True, n_classes=None)
    ids = labels["ImageId"].tolist()
    groups = duplicates.find_groups(layouts.image_dir(root), ids, threshold)
    n_classes = layouts.data_classes(list(labels.columns))
    names = layouts.class_names(root, max(n_classes, 1))  # 0: merged masks only, one class
    rows = labels.to_dict("records")
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        stats = list(
            pool.map(lambda r: _mask_stats(layouts.row_masks(r), layouts.row_shape(r)), rows)
        )
    largest = max(int(h) * int(w) for h, w in labels[["height", "width"]].values)
    classes = []
    for c, name in enumerate(names.values()):
        areas = [a for s in stats for a in s[c][0]]
        classes.append(
            {
                "class": c + 1,
                "name": name,
                "images": sum(bool(s[c][0]) for s in stats),
                "defects": len(areas),
                "pixels": int(sum(areas)),
                "border_images": sum(s[c][1] for s in stats),
                "median_area": int(np.median(areas)) if areas else None,
                "area_histogram": _area_histogram(areas, largest),
            }
        )
    sizes = Counter(s for s in groups["sizes"] if s is not None)
    empty = int((labels["defect_pixels"] == 0).sum())
    border = sum(any(b for _, b in s) for s in stats)
    in_groups = sum(len(g) for g in groups["groups"])
    result = {
        "root": str(root.resolve()),
        "layout": "folder" if layouts.is_folder_layout(root) else "kaggle",
        "images": len(ids),
        "sizes": [{"height": h, "width": w, "images": n} for (h, w), n in sizes.most_common()],
        "unreadable": groups["unreadable"],
        "classes": classes,
        "empty": {"images": empty, "share": empty / len(ids)},
        "border": {"images": border, "share": border / len(ids)},
        "duplicates": {
            "threshold": groups["threshold"],
            "groups": groups["groups"],
            "images": in_groups,
            "pairs": groups["pairs"],
        },
        "split": None,
    }
    if split_file is not None:
        sides = read_split_sides(split_file)
        present = set(ids)
        known = {i: s for i, s in sides.items() if i in present}
        result["split"] = {
            "file": str(split_file),
            "counts": {s: sum(v == s for v in known.values()) for s in SPLITS},
            "not_in_data": len(sides) - len(known),
            "leaks": duplicates.split_leaks(groups["groups"], known),
        }
    return result


# ----------------------------------------------------------------------------- page
def area_histogram_uri(classes: Sequence[Mapping[str, Any]]) -> str:
    """PNG of each class's defect-area histogram (log area axis), as a data URI."""
    from matplotlib.ticker import MaxNLocator

    fig = figure(6.2, 3.4)
    ax = fig.add_subplot()
    for c in classes:
        edges, counts = c["area_histogram"]["edges"], c["area_histogram"]["counts"]
        label = f"{_label(c)}: {c['defects']} defects"
        ax.stairs(counts, edges, label=label, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("defect area (pixels, one 8-connected component)")
    ax.set_ylabel("defects")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return figure_uri(fig)


def _label(c: Mapping[str, Any]) -> str:
    """``class 3``, or ``scratch (3)`` for a class with a name (as the evaluation report)."""
    return class_text({str(c["class"]): c["name"]}, c["class"])


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td class=num>{fmt_number(v)}</td>" for v in r) + "</tr>" for r in rows
    )
    return f"<table class=metrics><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _groups_section(result: Mapping[str, Any], folder: Path) -> str:
    dup = result["duplicates"]
    sides = {}
    if result["split"] is not None:
        for group in result["split"]["leaks"]["across"]:
            sides.update({i: s for s, members in group.items() for i in members})
    figures = []
    for group in dup["groups"][:MAX_GROUPS_SHOWN]:
        pictures = []
        for iid in group:
            try:
                image = read_grey(folder / iid)
            except ValueError:
                continue
            width = max(1, round(image.shape[1] * THUMB_HEIGHT / image.shape[0]))
            thumb = cv2.resize(image, (width, THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
            side = f" ({sides[iid]})" if iid in sides else ""
            pictures.append(
                f'<figure class=dup><img alt="{html.escape(iid)}" src="{png_data_uri(thumb)}">'
                f"<figcaption><code>{html.escape(iid)}</code>{side}</figcaption></figure>"
            )
        figures.append(f"<div class=group>{''.join(pictures)}</div>")
    shown = len(figures)
    more = (
        f" The first {shown} are drawn; the JSON lists all." if shown < len(dup["groups"]) else ""
    )
    return (
        f"<section><h2>Near-duplicates: {len(dup['groups'])} group(s), {dup['images']} images"
        "</h2><p class=note>Each image is hashed (imagehash's 64-bit perceptual hash) under its 8 "
        "flips and quarter turns; two images are near-duplicates when one of those hashes is "
        f"within {dup['threshold']} bits of the other's, and groups join near-duplicates of "
        f"near-duplicates. A side in brackets: the split puts the group on several sides.{more}"
        f"</p>{''.join(figures) or '<p class=note>None found.</p>'}</section>"
    )


def _split_section(split: Mapping[str, Any] | None) -> str:
    if split is None:
        return (
            "<section><h2>Split</h2><p class=note>No split given: pass --split-file (ImageId,"
            "split, e.g. a prepared split.csv) to see which near-duplicates it leaks.</p>"
            "</section>"
        )
    leaks = split["leaks"]
    rows = [["; ".join(f"{s}: {', '.join(m)}" for s, m in g.items())] for g in leaks["across"]]
    counts = ", ".join(f"{s} {n}" for s, n in split["counts"].items())
    missing = f" ({split['not_in_data']} listed image(s) are not in the data)" * bool(
        split["not_in_data"]
    )
    return (
        f"<section><h2>Split: {html.escape(split['file'])}</h2><p>{counts}{missing}. "
        f"<b>This split leaks {leaks['leaked']} val/test image(s)</b>: each has a "
        f"near-duplicate in train. {leaks['groups']} group(s) ({leaks['images']} images) lie "
        "on more than one side; <code>data.group_split=true</code> (steelseg-prepare "
        f"--group-split) keeps each group on one side.</p>"
        f"{_table(['groups on more than one side'], rows) if rows else ''}</section>"
    )


def render_data_report(result: Mapping[str, Any]) -> str:
    """The data report page as one HTML string (``result``: :func:`dataset_report`'s)."""
    root = Path(result["root"])
    n = result["images"]
    sizes = _table(
        ["height", "width", "images"],
        [[s["height"], s["width"], s["images"]] for s in result["sizes"]],
    )
    classes = _table(
        ["class", "images", "share", "defects", "defect pixels", "median defect area", "border"],
        [
            [
                _label(c),
                c["images"],
                f"{c['images'] / n:.1%}",
                c["defects"],
                c["pixels"],
                c["median_area"],
                c["border_images"],
            ]
            for c in result["classes"]
        ],
    )
    split = result["split"]
    kpis = [
        (n, "images"),
        (f"{result['empty']['share']:.1%}", "without a defect"),
        (f"{result['border']['share']:.1%}", "masks touching the border"),
        (len(result["duplicates"]["groups"]), "near-duplicate groups"),
    ]
    if split is not None:
        kpis.append((split["leaks"]["leaked"], "val/test images leaked by the split"))
    cards = "".join(
        f"<div class=kpi><div class=kv>{html.escape(str(v))}</div><div class=kl>{k}</div></div>"
        for v, k in kpis
    )
    unreadable = result["unreadable"]
    bad = (
        f"<p class=note>Unreadable (left out of the hashes): {html.escape(', '.join(unreadable))}"
        "</p>"
        if unreadable
        else ""
    )
    title = f"Data report: {root.name}"
    subtitle = f"{html.escape(str(root))} ({result['layout']} layout)"
    body = f"""<div class=kpis>{cards}</div>
<section><h2>Image sizes</h2>{sizes}{bad}</section>
<section><h2>Classes</h2><p class=note>images: images showing the class; defects: its
8-connected components; border: images where it touches the image's edge (a defect the frame
cuts). {result["empty"]["images"]} of {n} images have no defect.</p>{classes}
<div class=plots><img alt="defect-area histograms" src="{area_histogram_uri(result["classes"])}">
</div></section>
{_split_section(split)}
{_groups_section(result, layouts.image_dir(root))}"""
    return page(title, subtitle, body, JSON_NAME, css=EXTRA_CSS)


EXTRA_CSS = """
div.group{display:flex;gap:8px;flex-wrap:wrap;margin:0 0 12px;padding-bottom:8px;border-bottom:1px solid var(--line)}
.plots img{max-width:680px}figure.dup{margin:0}figure.dup img{height:96px;width:auto}figure.dup figcaption{font-size:12px}
"""


def report_dataset(
    root: str | os.PathLike,
    out: str | os.PathLike,
    split_file: str | os.PathLike | None = None,
    threshold: int = duplicates.HASH_THRESHOLD,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Write ``out/data_report.json`` and ``out/data_report.html`` (atomically) for a data
    folder: ``steelseg-data report``'s work.

    Args:
        root, split_file, threshold, skip_bad: As for :func:`dataset_report`.
        out: The output folder.

    Returns:
        The report's numbers (:func:`dataset_report`).
    """
    out = Path(out)
    result = dataset_report(root, split_file, threshold, skip_bad)
    atomic_write_text(out / JSON_NAME, json.dumps(json_ready(result), indent=1) + "\n")
    write_page(out / HTML_NAME, render_data_report(result))
    return result
