"""Labels from labelling tools into the folder layout: ``steelseg-import``'s work.

:func:`import_labels` reads an export and writes ``OUT/images/`` (the images, copied),
``OUT/masks/<stem>.png`` (class id per pixel, 0 = background) and ``OUT/classes.csv`` (id, name,
colour: :func:`steelseg.layouts.read_classes`). The formats (``--format``):

* ``coco``: COCO instance segmentation JSON (polygons, RLE; an annotation with a box and no
  segmentation is its box), also Label Studio's COCO export;
* ``labelstudio``: Label Studio's JSON export (``polygonlabels``, ``rectanglelabels``,
  ``ellipselabels``; ``brushlabels`` with the ``label-studio-converter`` package);
* ``cvat``: CVAT for images 1.1 XML (``polygon``, ``box``, ``ellipse``, ``mask``);
* ``labelme``: LabelMe JSON files (``polygon``, ``rectangle``, ``circle``);
* ``masks``: colour (or 0/255) masks with a colour per class (``--classes name=#rrggbb,...``).

Every format but ``masks`` is first read into one COCO dict, so one reader
(:func:`steelseg.coco.coco_to_masks`, through pycocotools) rasterises every tool's shapes and
one overlap rule (:func:`steelseg.coco.paint`: a smaller instance is drawn over a larger one)
holds for all. Lines and points, which have no area, are skipped (and counted).

Bad input is one ``ValueError`` line naming the file, the annotation and the fix, and nothing is
written: the output is built in a temporary folder and renamed at the end.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.coco import category_classes, coco_to_masks, encode_rle, read_coco, read_json
from steelseg.io import atomic_dir, check_out_folder, images_in, write_png
from steelseg.layouts import FOLDER_IMAGES, FOLDER_MASKS, MAX_CLASSES, write_classes

FORMATS = ("coco", "cvat", "labelme", "labelstudio", "masks")
#: Colours of classes the export gives none (matplotlib's tab10): classes.csv always has one.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
BACKGROUND = "#000000"  # the masks format: black is background
ELLIPSE_POINTS = 72  # vertices of the polygon an ellipse or circle becomes (5-degree steps)
LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio renames uploads <8 hex>-name
NO_AREA = ("line", "linestrip", "polyline", "point", "points", "keypointlabels")


def parse_classes(text: str) -> dict[str, str]:
    """``--classes``: ``name=#rrggbb,...`` or ``name,...`` -> {name: colour or ""}, in order
    (class ids 1, 2, ... follow it).

    Raises:
        ValueError: an empty name, a name twice, or a colour not ``#rrggbb``.
    """
    classes: dict[str, str] = {}
    for item in text.split(","):
        name, _, colour = (part.strip() for part in item.partition("="))
        if not name or name in classes:
            raise ValueError(
                f"--classes {text!r}: {'a name is empty' if not name else f'{name!r} is twice'}; "
                "give each class once, e.g. --classes scratch=#ff0000,pit=#00ff00"
            )
        if colour and not re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
            raise ValueError(
                f"--classes {text!r}: {colour!r} of {name} is not a colour #rrggbb (e.g. #ff0000)"
            )
        classes[name] = colour.lower()
    if len(classes) > MAX_CLASSES:
        raise ValueError(f"--classes names {len(classes)} classes; masks hold at most 255")
    return classes


def import_labels(
    src: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    classes: Mapping[str, str] | None = None,
    images: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a labelling tool's export as the folder layout: ``steelseg-import``.

    Args:
        src: The export: a COCO, Label Studio or LabelMe JSON file, a CVAT XML file, a folder
            of LabelMe JSON files, or (``masks``) a folder with ``images/`` and ``masks/``.
        fmt: One of :data:`FORMATS`.
        out: The folder to write (``images/``, ``masks/``, ``classes.csv``).
        classes: {name: colour} in class-id order (:func:`parse_classes`); required for
            ``masks`` (colours), else optional: it fixes the ids, and a label it lacks is an error.
        images: The folder holding the images (default: the export's own folder).
        overwrite: Replace an existing ``out``.

    Returns:
        A summary: ``out``, ``images``, ``annotations``, ``classes`` ({id: name}),
        ``pixels`` ({id: labelled pixels}), ``skipped`` (shapes without area: lines, points)
        and ``unlabelled`` (Label Studio tasks without an annotation, left out).

    Raises:
        ValueError: bad input, in one line naming the file, the annotation and the fix.
        FileNotFoundError: ``src`` or an image is missing.
    """
    src, out = Path(src), Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist; give the exported file or folder")
    check_out_folder(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    if fmt == "masks":
        if not classes or not all(classes.values()):
            raise ValueError(
                "--format masks needs the colour of every class: --classes name=#rrggbb,... "
                "(0/255 masks: --classes defect=#ffffff)"
            )
        table = {i: (n, c) for i, (n, c) in enumerate(classes.items(), start=1)}
        pairs, counts = _colour_masks(src, table, images), {"annotations": None}
    else:
        coco = READERS[fmt](src)
        table, class_ids = _class_table(coco, classes, src)
        paths = [_locate(entry, Path(images) if images else None) for entry in coco["images"]]
        _check_names(paths, coco["images"])
        pairs = zip(paths, (mask for _, mask in coco_to_masks(coco, class_ids, str(src))))
        counts = {"annotations": len(coco["annotations"])}
        counts |= {k: coco.get(k, 0) for k in ("skipped", "unlabelled")}
    pixels, n_images = np.zeros(MAX_CLASSES + 1, np.int64), 0
    with atomic_dir(out, replace=overwrite) as tmp:
        for path, mask in pairs:  # one image at a time
            pixels += np.bincount(mask.ravel(), minlength=MAX_CLASSES + 1)
            (tmp / FOLDER_IMAGES).mkdir(exist_ok=True)
            shutil.copyfile(path, tmp / FOLDER_IMAGES / path.name)
            write_png(tmp / FOLDER_MASKS / f"{path.stem}.png", mask)
            n_images += 1
        if not n_images:
            raise ValueError(f"{src} labels no images; export the images' annotations")
        write_classes(tmp, table)
    return {
        "out": str(out),
        "images": n_images,
        "classes": {c: name for c, (name, _) in table.items()},
        "pixels": {c: int(pixels[c]) for c in table},
        "skipped": 0,
        "unlabelled": 0,
        **counts,
    }


# ----------------------------------------------------------------------------- the class table
def _class_table(
    coco: Mapping[str, Any], classes: Mapping[str, str] | None, src: Path
) -> tuple[dict[int, tuple[str, str]], dict[int, int]]:
    """The class table {id: (name, colour)} and {COCO category id: class id}.

    Without ``classes`` the export's categories are the classes, in order; with it, its order
    gives the ids and an annotation whose label it lacks is refused.
    """
    categories = category_classes(coco, str(src))
    colours = {c["name"]: c.get("color", "") for c in coco["categories"]}
    if classes is None:
        table = {k: (name, colours.get(name) or "") for k, name in categories.values()}
        class_ids = {cat: k for cat, (k, _) in categories.items()}
    else:
        ids = {name: k for k, name in enumerate(classes, start=1)}
        used = {a.get("category_id"): a for a in reversed(coco["annotations"])}  # the first
        for cat, (_, name) in categories.items():
            if name not in ids and cat in used:
                where = used[cat].get("where") or f"{src}: annotation {used[cat].get('id')}"
                raise ValueError(
                    f"{where} has the label "
                    f"{name!r}, which --classes lacks ({', '.join(classes)}); add it to --classes"
                )
        table = {k: (name, classes[name] or colours.get(name) or "") for name, k in ids.items()}
        class_ids = {cat: ids[name] for cat, (_, name) in categories.items() if name in ids}
    table = {k: (n, c or PALETTE[(k - 1) % len(PALETTE)]) for k, (n, c) in table.items()}
    return table, class_ids


# ----------------------------------------------------------------------------- the images
def _locate(entry: dict, folder: Path | None) -> Path:
    """The image file of a COCO image entry, its size checked against the entry's.

    Looked for in ``folder`` (else the entry's ``dir``, the export's folder): the file name as
    given, its base name, the base name without Label Studio's upload prefix, and under
    ``images/``. An entry without a size takes the file's.

    Raises:
        FileNotFoundError: no such image.
        ValueError: the image's size differs from the annotations'.
    """
    from PIL import Image

    base = folder if folder is not None else Path(entry.get("dir", "."))
    name = str(entry.get("file_name") or "")
    if "?d=" in name:  # Label Studio's local storage: /data/local-files/?d=images/a.jpg
        name = urllib.parse.parse_qs(urllib.parse.urlsplit(name).query).get("d", [name])[0]
    plain = Path(name.replace("\\", "/")).name
    candidates = [Path(name), Path(plain), Path(LS_UPLOAD_PREFIX.sub("", plain))]
    candidates.append(Path(FOLDER_IMAGES) / candidates[-1])
    path = next((base / c for c in candidates if name and (base / c).is_file()), None)
    where = entry.get("where") or f"image {entry.get('id')}"
    if path is None:
        raise FileNotFoundError(
            f"{where}: the image {name!r} is not in {base}; pass --images with the folder that "
            "holds the labelled images"
        )
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as e:  # PIL raises many types for broken files
        raise ValueError(f"{where}: cannot read the image {path} ({type(e).__name__})") from None
    if entry.get("height") is None:
        entry["height"], entry["width"] = height, width
    elif (entry["height"], entry["width"]) != (height, width):
        raise ValueError(
            f"{where}: the image {path} is {width}x{height} but it was labelled at "
            f"{entry['width']}x{entry['height']} (width x height); pass --images with the images "
            "that were labelled, not resized copies"
        )
    return path


def _check_names(paths: list[Path], entries: list[dict]) -> None:
    """Refuse two images of one export with one output name (same file stem)."""
    seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        j = seen.setdefault(path.stem, i)
        if j != i:
            first, second = (entries[k].get("where") or entries[k]["file_name"] for k in (j, i))
            what = f"the image {path}" if path == paths[j] else f"images {paths[j]} and {path}"
            raise ValueError(
                f"{first} and {second} both label {what} (one mask {path.stem}.png); keep one, "
                "or rename one of the images"
            )


# ----------------------------------------------------------------------------- readers
def _box(x0: float, y0: float, x1: float, y1: float, degrees: float = 0.0, centre=None) -> list:
    """A box as a COCO polygon, turned ``degrees`` clockwise about ``centre`` (default: its
    own centre)."""
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)
    return _turn(corners, degrees, centre if centre is not None else corners.mean(0))


def _ellipse(cx: float, cy: float, rx: float, ry: float, degrees: float = 0.0) -> list:
    """An ellipse (radii along x and y before turning) as a COCO polygon."""
    t = np.linspace(0.0, 2.0 * math.pi, ELLIPSE_POINTS, endpoint=False)
    points = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
    return _turn(points, degrees, np.array([cx, cy]))


def _turn(points: np.ndarray, degrees: float, centre: np.ndarray) -> list:
    """Points turned clockwise on the image (y down) about ``centre``, flattened."""
    a = math.radians(degrees)
    turn = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return ((points - centre) @ turn.T + centre).ravel().tolist()


class _Builder:
    """A COCO dict built image by image from another format, with each entry's ``where``."""

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        self.fixed = labels is not None  # the export declares its labels: others are unknown
        self.labels: dict[str, str] = dict(labels or {})  # name -> colour
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def image(
        self, image_id: Any, file_name: str, size: tuple[int, int] | None, folder: Path, where: str
    ) -> Any:
        """Add an image (``size``: (height, width) it was labelled at; None: its file's);
        returns its id. ``file_name`` is looked for in ``folder`` (see :func:`_locate`)."""
        height, width = size if size is not None else (None, None)
        self.images.append(
            {"id": image_id, "file_name": file_name, "height": height, "width": width,
             "dir": str(folder), "where": where}
        )  # fmt: skip
        return image_id

    def add(self, image_id: Any, label: str, segmentation: Any, where: str) -> None:
        """Add an instance of ``label`` (a COCO segmentation) to an image."""
        if label not in self.labels:
            if self.fixed:
                raise ValueError(
                    f"{where} has the label {label!r}, which the file's labels lack "
                    f"({', '.join(self.labels)}); add it to the task's labels or fix the shape"
                )
            self.labels[label] = ""
        category = list(self.labels).index(label) + 1
        self.annotations.append(
            {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": category,
             "segmentation": segmentation, "iscrowd": 0, "where": where}
        )  # fmt: skip

    def coco(self, skipped: int = 0, unlabelled: int = 0) -> dict:
        """The COCO dict; ``skipped``: shapes without area left out (lines, points);
        ``unlabelled``: images left out because nobody labelled them yet."""
        categories = [
            {"id": k, "name": name, "color": colour}
            for k, (name, colour) in enumerate(self.labels.items(), start=1)
        ]
        return {
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories,
            "skipped": skipped,
            "unlabelled": unlabelled,
        }


def read_coco_export(path: Path) -> dict:
    """A COCO JSON file (also Label Studio's COCO export) as a COCO dict for
    :func:`import_labels`; an annotation with an empty segmentation and a box is its box."""
    coco = read_coco(path)
    for entry in coco["images"]:
        entry.setdefault("dir", str(path.parent))
        entry["where"] = f"{path}: image {entry.get('id')} ({entry.get('file_name')})"
    for ann in coco["annotations"]:  # named by coco_to_masks: file, annotation id, image
        if not ann.get("segmentation") and len(ann.get("bbox") or ()) == 4:
            x, y, w, h = ann["bbox"]
            ann["segmentation"] = [_box(x, y, x + w, y + h)]
    return coco


def read_cvat(path: Path) -> dict:
    """CVAT for images 1.1 XML as a COCO dict: polygons, boxes (turned by ``rotation``),
    ellipses and masks (CVAT's RLE: runs of 0 and 1 in row order over the mask's box, first
    a run of 0)."""
    import xml.etree.ElementTree as ET

    if path.is_dir():
        path = path / "annotations.xml"
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        if path.read_bytes()[:64].lstrip()[:1] in (b"{", b"["):
            raise ValueError(
                f"{path} is JSON, not XML: --format coco, labelme or labelstudio reads JSON"
            ) from None
        line, column = e.position
        raise ValueError(
            f"{path} is not valid XML (line {line}, column {column}); fix the file or export it "
            "again"
        ) from None
    if root.tag != "annotations" or root.find("track") is not None:
        raise ValueError(
            f"{path} is not a CVAT for images XML file (<annotations> with <image> elements); "
            "export the task as 'CVAT for images 1.1'"
        )
    labels = {
        (label.findtext("name") or "").strip(): (label.findtext("color") or "").strip().lower()
        for label in root.iterfind("meta/*/labels/label")
    }
    build = _Builder(labels or None)
    skipped = 0
    for element in root.iterfind("image"):
        name = element.get("name", "")
        where = f"{path}: <image id={element.get('id')} name={name}>"
        try:
            size = int(element.get("height")), int(element.get("width"))
        except (TypeError, ValueError):
            raise ValueError(f"{where} has no height and width; export it again") from None
        image_id = build.image(element.get("id"), name, size, path.parent, where)
        for k, shape in enumerate(element):
            at = f"{where} <{shape.tag}> {k + 1} (label {shape.get('label')!r})"
            try:
                segmentation = _cvat_shape(shape, size)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{at}: {e}; fix or remove the shape") from None
            if segmentation is None:
                skipped += shape.tag != "tag"
                continue
            build.add(image_id, shape.get("label", ""), segmentation, at)
    return build.coco(skipped)


def _cvat_shape(shape: Any, size: tuple[int, int]) -> Any:
    """A CVAT shape element as a COCO segmentation, or None for one without area."""
    a = shape.attrib
    if shape.tag == "polygon":
        return [[float(v) for p in a["points"].split(";") for v in p.split(",")]]
    if shape.tag == "box":
        corners = (float(a[k]) for k in ("xtl", "ytl", "xbr", "ybr"))
        return [_box(*corners, degrees=float(a.get("rotation", 0)))]
    if shape.tag == "ellipse":
        cx, cy, rx, ry = (float(a[k]) for k in ("cx", "cy", "rx", "ry"))
        return [_ellipse(cx, cy, rx, ry, float(a.get("rotation", 0)))]
    if shape.tag == "mask":
        return _cvat_mask(a, size)
    return None


def _cvat_mask(a: Mapping[str, str], size: tuple[int, int]) -> dict:
    """A CVAT ``<mask>`` as a COCO RLE of the whole image.

    CVAT's runs go in row order over the (height, width) box; COCO's go in column order, so
    they are the COCO RLE of the transposed box, which pycocotools decodes.
    """
    from pycocotools import mask as mask_utils

    left, top, width, height = (int(float(a[k])) for k in ("left", "top", "width", "height"))
    counts = [int(v) for v in a["rle"].split(",")]
    if sum(counts) != width * height:
        raise ValueError(f"its rle covers {sum(counts)} pixels, not its {width}x{height} box")
    if left < 0 or top < 0 or left + width > size[1] or top + height > size[0]:
        raise ValueError(
            f"its box {width}x{height} at ({left}, {top}) is outside the {size[1]}x{size[0]} "
            "image; it was drawn on an image of another size"
        )
    transposed = mask_utils.frPyObjects({"counts": counts, "size": [width, height]}, width, height)
    full = np.zeros(size, np.uint8)
    full[top : top + height, left : left + width] = mask_utils.decode(transposed).T
    return encode_rle(full.astype(bool))


def read_labelme(src: Path) -> dict:
    """LabelMe JSON files (a file, or a folder of them) as a COCO dict: polygons, rectangles
    and circles; each image is ``imagePath`` beside its JSON file, of ``imageHeight`` x
    ``imageWidth``."""
    files = sorted(src.glob("*.json")) if src.is_dir() else [src]
    if not files:
        raise ValueError(f"{src} holds no LabelMe JSON files (*.json); give their folder")
    build, skipped = _Builder(), 0
    for k, path in enumerate(files, start=1):
        doc = read_json(path)
        if not isinstance(doc, dict) or "shapes" not in doc or "imagePath" not in doc:
            raise ValueError(
                f"{path} is not a LabelMe file (no shapes and imagePath); save it with LabelMe, "
                "or choose another --format"
            )
        size = (doc.get("imageHeight"), doc.get("imageWidth"))
        if not all(isinstance(v, int) for v in size):
            raise ValueError(
                f"{path} has no imageHeight and imageWidth; open and save it in LabelMe again"
            )
        build.image(k, doc["imagePath"], size, path.parent, str(path))
        for j, shape in enumerate(doc["shapes"], start=1):
            kind = shape.get("shape_type") or "polygon"
            at = f"{path}: shape {j} ({kind}, label {shape.get('label')!r})"
            if kind in NO_AREA:
                skipped += 1
                continue
            try:
                segmentation = _labelme_shape(kind, np.asarray(shape["points"], float))
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise ValueError(f"{at}: {e}; fix or remove the shape") from None
            build.add(k, str(shape.get("label", "")), segmentation, at)
    return build.coco(skipped)


def _labelme_shape(kind: str, points: np.ndarray) -> list:
    """A LabelMe shape's points (N, 2) as a COCO segmentation."""
    if kind == "polygon":
        return [points.ravel().tolist()]
    if kind == "rectangle":
        (x0, y0), (x1, y1) = points.min(0), points.max(0)
        return [_box(x0, y0, x1, y1)]
    if kind == "circle":
        (cx, cy), edge = points[0], points[1]
        r = float(np.hypot(*(edge - points[0])))
        return [_ellipse(cx, cy, r, r)]
    raise ValueError(
        f"shape_type {kind!r} is not supported (polygon, rectangle, circle); redraw it as a polygon"
    )


def read_label_studio(path: Path) -> dict:
    """Label Studio's JSON export (a list of tasks) as a COCO dict.

    Of each task, the last annotation that was not cancelled is used (several annotators:
    the latest), its results of type ``polygonlabels``, ``rectanglelabels`` (turned by
    ``rotation`` about their top-left corner), ``ellipselabels`` and ``brushlabels``
    (Label Studio's RLE, decoded by ``label-studio-converter``). Coordinates are per cent of
    ``original_width`` / ``original_height``.
    """
    tasks = read_json(path)
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "data" in t for t in tasks):
        raise ValueError(
            f"{path} is not a Label Studio JSON export (a list of tasks with data and "
            "annotations); export as JSON, or choose another --format"
        )
    build, seen, unlabelled = _Builder(), set(), 0
    for k, task in enumerate(tasks, start=1):
        where = f"{path}: task {task.get('id', k)}"
        if task.get("id", k) in seen:
            raise ValueError(f"{where} is in the file twice; export the project again")
        seen.add(task.get("id", k))
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not annotations:  # not labelled yet (or skipped): not a clean image
            unlabelled += 1
            continue
        results = annotations[-1].get("result", [])
        size = _ls_size(results, where)
        image_id = build.image(k, _ls_image(task["data"], where), size, path.parent, where)
        for result in results:
            kind = result.get("type", "")
            at = f"{where} result {result.get('id')} ({kind})"
            value = result.get("value", {})
            names = value.get(kind) or []
            if kind not in LS_SHAPES:
                continue  # choices, text, keypoints: no area to draw
            if len(names) != 1:
                raise ValueError(f"{at} has {len(names)} labels {names}; give each region one")
            try:
                segmentation = LS_SHAPES[kind](value, size)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{at}: {e}; fix or remove the region") from None
            build.add(image_id, str(names[0]), segmentation, at)
    return build.coco(unlabelled=unlabelled)


def _ls_image(data: Mapping[str, Any], where: str) -> str:
    """The image reference of a Label Studio task: ``data.image``, or its one text value."""
    texts = [v for v in data.values() if isinstance(v, str)]
    if isinstance(data.get("image"), str):
        return data["image"]
    if len(texts) == 1:
        return texts[0]
    raise ValueError(f"{where}: which of its data fields {list(data)} is the image? name it image")


def _ls_size(results: list, where: str) -> tuple[int, int] | None:
    """(height, width) the results were drawn on (``original_height``, ``original_width``);
    None without results (the image file's size is taken)."""
    sizes = {(r.get("original_height"), r.get("original_width")) for r in results if "value" in r}
    sizes.discard((None, None))
    if len(sizes) > 1:
        raise ValueError(f"{where}: its results give several image sizes {sorted(sizes)}")
    return next(iter(sizes)) if sizes else None


def _ls_polygon(value: Mapping[str, Any], size: tuple[int, int]) -> list:
    points = np.asarray(value["points"], float) * [size[1] / 100.0, size[0] / 100.0]
    return [points.ravel().tolist()]


def _ls_rectangle(value: Mapping[str, Any], size: tuple[int, int]) -> list:
    sx, sy = size[1] / 100.0, size[0] / 100.0
    x, y = value["x"] * sx, value["y"] * sy
    w, h = value["width"] * sx, value["height"] * sy
    return [_box(x, y, x + w, y + h, float(value.get("rotation", 0)), np.array([x, y]))]


def _ls_ellipse(value: Mapping[str, Any], size: tuple[int, int]) -> list:
    sx, sy = size[1] / 100.0, size[0] / 100.0
    return [
        _ellipse(
            value["x"] * sx,
            value["y"] * sy,
            value["radiusX"] * sx,
            value["radiusY"] * sy,
            float(value.get("rotation", 0)),
        )
    ]


def _ls_brush(value: Mapping[str, Any], size: tuple[int, int]) -> dict:
    """A brush stroke: Label Studio's RLE of the image's RGBA pixels; the alpha is the mask."""
    try:
        from label_studio_converter.brush import decode_rle
    except ImportError:
        raise ValueError(
            "brush regions need the label-studio-converter package: pip install "
            "'steelseg[labelstudio]'"
        ) from None
    if value.get("format") != "rle":
        raise ValueError(f"brush format {value.get('format')!r} is not rle")
    rgba = decode_rle(value["rle"])
    if rgba.size != size[0] * size[1] * 4:
        raise ValueError(f"its rle holds {rgba.size // 4} pixels, not {size[1]}x{size[0]}")
    alpha = rgba.reshape(size[0], size[1], 4)[:, :, 3]
    return encode_rle(alpha >= 128)  # the stroke's alpha; half of 255 as for 0/255 masks


LS_SHAPES = {
    "polygonlabels": _ls_polygon,
    "rectanglelabels": _ls_rectangle,
    "ellipselabels": _ls_ellipse,
    "brushlabels": _ls_brush,
}
READERS = {
    "coco": read_coco_export,
    "cvat": read_cvat,
    "labelme": read_labelme,
    "labelstudio": read_label_studio,
}


# ----------------------------------------------------------------------------- colour masks
def _colour_masks(
    src: Path, table: Mapping[int, tuple[str, str]], images: str | os.PathLike | None
) -> Iterator[tuple[Path, np.ndarray]]:
    """``src/images/`` with their colour masks ``src/masks/<stem>.*``, as (image, class-id
    mask) pairs; every file is matched and sized before the first mask is read."""
    from PIL import Image

    image_folder = Path(images) if images is not None else src / FOLDER_IMAGES
    mask_folder = src / FOLDER_MASKS
    for folder in (image_folder, mask_folder):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} does not exist; --format masks reads SRC/images/ and SRC/masks/ "
                "(one mask per image, same stem)"
            )
    masks = {p.stem: p for p in images_in(mask_folder)}
    pictures = {p.stem: p for p in images_in(image_folder)}
    for stem, mask in masks.items():
        if stem not in pictures:
            raise FileNotFoundError(
                f"mask {mask} has no image {stem}.* in {image_folder}; add the image or remove "
                "the mask"
            )
    pairs = []
    for stem, picture in pictures.items():
        if stem not in masks:
            raise FileNotFoundError(
                f"image {picture} has no mask {stem}.png in {mask_folder}; add its mask (black "
                "where there is no defect) or remove the image"
            )
        with Image.open(picture) as im, Image.open(masks[stem]) as m:
            if im.size != m.size:
                raise ValueError(
                    f"mask {masks[stem]} is {m.size[0]}x{m.size[1]} but its image {picture} is "
                    f"{im.size[0]}x{im.size[1]}; a mask must have its image's size"
                )
        pairs.append((picture, masks[stem]))
    return ((p, _colour_mask(m, table)) for p, m in pairs)


def _packed(colour: str) -> int:
    """``#rrggbb`` as the integer 0xRRGGBB."""
    return int(colour[1:], 16)


def _colour_mask(path: Path, table: Mapping[int, tuple[str, str]]) -> np.ndarray:
    """A colour mask file as class ids by the table's colours (black: background).

    Raises:
        ValueError: a colour the table lacks, naming the file, the colour and the fix.
    """
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int32)  # grey and palette masks too
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # (H, W) 0xRRGGBB
    colours, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    ids = {_packed(BACKGROUND): 0} | {_packed(c): k for k, (_, c) in table.items()}
    unknown = [(int(c), int(n)) for c, n in zip(colours, counts) if int(c) not in ids]
    if unknown:
        listed = ", ".join(f"#{c:06x} ({n} pixels)" for c, n in unknown[:4])
        raise ValueError(
            f"mask {path} holds the colour(s) {listed} that --classes does not name; add "
            f"name=#rrggbb to --classes for each class colour (black {BACKGROUND} is "
            "background), and save masks without smoothed edges"
        )
    return np.array([ids[int(c)] for c in colours], np.uint8)[inverse.reshape(packed.shape)]
