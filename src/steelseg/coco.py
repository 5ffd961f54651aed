"""COCO instance segmentation in and out, through pycocotools' mask utilities.

A class-id mask (uint8 (H, W), 0 = background, pixel value = class id; the folder layout's
``masks/``) becomes one COCO annotation per connected component (8-connected) of each class:

* **RLE** (the default) is exact: :func:`coco_to_masks` gives the mask back pixel for pixel
  where classes do not overlap;
* **polygons** (``polygons=True``) trace each component's outer boundary through its edge
  pixels' centres (``cv2.findContours``): within a pixel of the mask, and without holes (a COCO
  polygon has none), for tools that draw polygons only.

Annotations are ``iscrowd: 0`` (an instance; COCO's crowd flag means "ignore this region" to
its evaluation) with ``area`` (pixels of the component), ``bbox`` and, for predictions,
``score``. Reading (:func:`coco_to_masks`) rasterises polygons and RLE with
``pycocotools.mask`` (``frPyObjects``, ``merge``, ``decode``), never by hand, and paints the
instances by :func:`paint`'s overlap rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.io import atomic_write_text, json_ready

#: One defect is one 8-connected component: a diagonal touch joins two pixels. The one place
#: this is said; COCO instances, the detection metrics, the area filters, tune and the data
#: report all count defects with it.
CONNECTIVITY = 8
OUTSIDE_TOLERANCE = 1.0  # pixels a polygon point may stray past the image's edge (rounding)


# ----------------------------------------------------------------------------- writing
def encode_rle(binary: np.ndarray) -> dict:
    """pycocotools' compressed RLE of a bool (H, W) mask, with ``counts`` as text (JSON)."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(binary, dtype=np.uint8))
    encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded


def _polygons(crop: np.ndarray, x: int = 0, y: int = 0) -> list[list[float]]:
    """The outer boundary of a bool component (cropped, its top-left at (x, y)) as COCO
    polygons ``[x1, y1, x2, ...]``.

    Points are the edge pixels' centres (+0.5: COCO's pixel (x, y) spans [x, x + 1)); a
    component of one or two pixels in a line is a degenerate outline that COCO readers skip,
    so it keeps a polygon round its pixels' square.
    """
    import cv2

    contours, _ = cv2.findContours(
        crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y)
    )
    polygons = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(float)
        if len(points) < 3:  # a point or a line: a box round its pixels
            (x0, y0), (x1, y1) = points.min(0), points.max(0) + 1
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        else:
            points += 0.5
        polygons.append([round(float(v), 2) for v in points.ravel()])
    return polygons


def _components(mask: np.ndarray) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Each connected component of each class of a class-id mask, cropped to its box:
    (class id, x, y, bool (h, w)); by class, then in OpenCV's label order (top to bottom)."""
    import cv2

    for c in np.flatnonzero(np.bincount(mask.ravel(), minlength=256)[1:]) + 1:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            (mask == c).astype(np.uint8), connectivity=CONNECTIVITY
        )
        for k in range(1, n):
            x, y, w, h = (int(v) for v in stats[k, :4])
            yield int(c), x, y, labels[y : y + h, x : x + w] == k


def masks_to_coco(
    items: Sequence[tuple[str, np.ndarray]],
    names: Mapping[int, str],
    scores: Sequence[Mapping[int, float]] | None = None,
    polygons: bool = False,
    probabilities: Sequence[np.ndarray | None] | None = None,
) -> dict:
    """A COCO dict of class-id masks: one annotation per connected component of each class.

    Args:
        items: (file name, class-id mask uint8 (H, W), 0 = background) per image.
        names: {class id: name} of every class (the categories, in id order).
        scores: Per item, {class id: score} given to each of that class's annotations.
        polygons: Polygon instances (outer boundaries, see the module docstring) instead of the
            exact RLE.
        probabilities: Per item, the class probabilities (float (C, H, W), channel c - 1 for
            class c; or (H, W) for one class), or None: each annotation's ``score`` is the mean
            probability of its class inside it (overrides ``scores``).

    Returns:
        ``{"images", "annotations", "categories"}``; image ids are 1.. in ``items``' order,
        annotation ids 1.. .

    Raises:
        ValueError: a mask holds a class id that ``names`` lacks, or ``scores`` /
            ``probabilities`` do not have one entry per item.
    """
    for extra, what in ((scores, "scores"), (probabilities, "probabilities")):
        if extra is not None and len(extra) != len(items):
            raise ValueError(f"{what} has {len(extra)} entries for {len(items)} images")
    images, annotations = [], []
    for image_id, (file_name, mask) in enumerate(items, start=1):
        height, width = mask.shape
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        prob = probabilities[image_id - 1] if probabilities is not None else None
        for c, x, y, crop in _components(mask):
            if c not in names:
                raise ValueError(
                    f"the mask of {file_name} holds class {c}, which has no name (classes: "
                    f"{', '.join(f'{k}={v}' for k, v in sorted(names.items()))}); name every class"
                )
            h, w = crop.shape
            if polygons:
                segmentation = _polygons(crop, x, y)
            else:
                whole = np.zeros(mask.shape, bool)
                whole[y : y + h, x : x + w] = crop
                segmentation = encode_rle(whole)
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": c,
                "segmentation": segmentation,
                "area": int(crop.sum()),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
            if prob is not None:
                channel = prob if prob.ndim == 2 else prob[c - 1]
                ann["score"] = round(float(channel[y : y + h, x : x + w][crop].mean()), 4)
            elif scores is not None and c in scores[image_id - 1]:
                ann["score"] = float(scores[image_id - 1][c])
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": categories(names)}


def concat(parts: Sequence[Mapping[str, Any]], names: Mapping[int, str]) -> dict:
    """COCO dicts (e.g. one per image, as :func:`masks_to_coco` made them) as one, image and
    annotation ids renumbered 1.. in order; categories from ``names``."""
    images, annotations = [], []
    for part in parts:
        new_ids = {}
        for entry in part["images"]:
            new_ids[entry["id"]] = len(images) + 1
            images.append({**entry, "id": len(images) + 1})
        for ann in part["annotations"]:
            annotations.append(
                {**ann, "id": len(annotations) + 1, "image_id": new_ids[ann["image_id"]]}
            )
    return {"images": images, "annotations": annotations, "categories": categories(names)}


def categories(names: Mapping[int, str]) -> list[dict]:
    """COCO categories of {class id: name}, in id order."""
    return [
        {"id": int(c), "name": str(n), "supercategory": "defect"} for c, n in sorted(names.items())
    ]


def write_coco(path: str | os.PathLike, coco: Mapping[str, Any]) -> None:
    """Write a COCO dict as JSON, atomically (strict JSON: numpy scalars become numbers)."""
    atomic_write_text(Path(path), json.dumps(json_ready(dict(coco)), separators=(",", ":")))


# ----------------------------------------------------------------------------- reading
def segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, or RLE compressed or not) as bool (H, W).

    Polygons (a list of ``[x1, y1, ...]``) are merged into one mask, so an instance may have
    several parts; an RLE carries its holes.

    Raises:
        ValueError: not a polygon list or an RLE of this size (the caller names the file and
            annotation).
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        if not segmentation or not all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation
        ):
            raise ValueError(
                "polygons must be a list of [x1, y1, x2, y2, x3, y3, ...] with 3 or more points"
            )
        rles = mask_utils.frPyObjects([[float(v) for v in p] for p in segmentation], height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            h, w = segmentation["size"]
            raise ValueError(
                f"its RLE is {w}x{h} but the image is {width}x{height} (width x height)"
            )
        rle = segmentation
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, height, width)
    else:
        raise ValueError("its segmentation is neither polygons nor an RLE {counts, size}")
    return mask_utils.decode(rle).astype(bool)


def paint(shape: tuple[int, int], instances: Iterable[tuple[int, np.ndarray]]) -> np.ndarray:
    """Draw instances into one class-id mask by the overlap rule: larger instances first, so a
    smaller one is drawn over a larger one (a small defect inside a large patch survives); equal
    areas keep the later instance on top.

    Args:
        shape: (height, width).
        instances: (class id, bool (H, W)) per instance, in file order.

    Returns:
        uint8 (H, W), 0 = background.
    """
    mask = np.zeros(shape, np.uint8)
    order = sorted(enumerate(instances), key=lambda item: (-int(item[1][1].sum()), item[0]))
    for _, (c, binary) in order:
        mask[binary] = c
    return mask


def coco_to_masks(
    coco: Mapping[str, Any], class_ids: Mapping[int, int], where: str = "COCO file"
) -> Iterator[tuple[dict, np.ndarray]]:
    """Each image of a COCO dict with its class-id mask (:func:`paint`'s overlap rule).

    Everything is checked before the first mask is made; masks are made one image at a time.

    Args:
        coco: A COCO dict (``images`` with ``height`` and ``width``, ``annotations``). An
            annotation's optional ``where`` names it in messages (the importers set it to the
            file and shape it came from); else it is ``<where>: annotation <id> (image <name>)``.
        class_ids: {COCO category id: class id} (see :func:`category_classes`).
        where: Names the file in messages.

    Yields:
        (image entry, uint8 (H, W) class-id mask) per image, in the file's order.

    Raises:
        ValueError: one line naming the file, the annotation or image and the fix: duplicate
            image ids, an image without a size, an annotation of an unknown image or category,
            a bad segmentation, a polygon outside its image.
    """
    images: dict[Any, dict] = {}
    for entry in coco.get("images", []):
        image_id = entry.get("id")
        if image_id in images:
            raise ValueError(
                f"{where}: image id {image_id} is used twice ({images[image_id].get('file_name')} "
                f"and {entry.get('file_name')}); give each image its own id"
            )
        if not isinstance(entry.get("height"), int) or not isinstance(entry.get("width"), int):
            raise ValueError(
                f"{where}: image {entry.get('file_name')} (id {image_id}) has no height and "
                "width; add them to its entry in images"
            )
        images[image_id] = entry
    by_image: dict[Any, list[tuple[str, dict]]] = {i: [] for i in images}
    for ann in coco.get("annotations", []):
        name = ann.get("where") or f"{where}: annotation {ann.get('id')}"
        entry = images.get(ann.get("image_id"))
        if entry is None:
            raise ValueError(
                f"{name} names image id {ann.get('image_id')}, which is not in images; add the "
                "image or remove the annotation"
            )
        if not ann.get("where"):
            name = f"{name} (image {entry['file_name']})"
        if ann.get("category_id") not in class_ids:
            raise ValueError(
                f"{name} has the unknown category_id {ann.get('category_id')} (categories: "
                f"{', '.join(map(str, class_ids))}); add it to categories or remove the annotation"
            )
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, list):
            check_points(segmentation, entry["height"], entry["width"], name)
        by_image[ann["image_id"]].append((name, ann))
    for image_id, entry in images.items():
        shape = (entry["height"], entry["width"])
        instances = []
        for name, ann in by_image[image_id]:
            try:
                binary = segmentation_mask(ann.get("segmentation"), *shape)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{name}: {e}; fix or remove the annotation") from None
            instances.append((class_ids[ann["category_id"]], binary))
        yield entry, paint(shape, instances)


def check_points(
    polygons: Any, height: int, width: int, name: str, tolerance: float = OUTSIDE_TOLERANCE
) -> None:
    """Refuse a polygon with a point outside its image (x in [0, width], y in [0, height],
    give or take ``tolerance`` pixels).

    Raises:
        ValueError: naming the annotation, the point, the image's size and the fix.
    """
    for polygon in polygons:
        try:
            points = np.asarray(polygon, float).reshape(-1, 2)
        except (ValueError, TypeError):
            continue  # not numbers in pairs: segmentation_mask names it
        outside = (
            (points < -tolerance).any(1)
            | (points[:, 0] > width + tolerance)
            | (points[:, 1] > height + tolerance)
        )
        if outside.any():
            x, y = points[np.flatnonzero(outside)[0]]
            raise ValueError(
                f"{name} has the point ({x:g}, {y:g}) outside its {width}x{height} image; it was "
                "drawn on an image of another size, or dragged off the edge: fix or remove it"
            )


def category_classes(coco: Mapping[str, Any], where: str) -> dict[int, tuple[int, str]]:
    """{COCO category id: (class id, name)}: classes are numbered 1..N in category id order
    (COCO ids may start at 0, as Label Studio's export does, or have gaps).

    Raises:
        ValueError: no categories, or one id twice.
    """
    categories = coco.get("categories") or []
    if not categories:
        raise ValueError(f"{where} has no categories; add one per class ({{'id', 'name'}})")
    ids = [c.get("id") for c in categories]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise ValueError(f"{where}: category id {dup} is used twice; give each category its own id")
    by_id = sorted(categories, key=lambda c: c["id"])
    return {c["id"]: (k, str(c.get("name", c["id"]))) for k, c in enumerate(by_id, start=1)}


def read_json(path: str | os.PathLike) -> Any:
    """A labelling tool's JSON export, or one line naming it and where it breaks."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("<"):
            raise ValueError(
                f"{path} is XML, not JSON: a CVAT for images export is --format cvat"
            ) from None
        raise ValueError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix the file "
            "or export it again"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; export the annotations again") from None


def read_coco(path: str | os.PathLike) -> dict:
    """A COCO JSON file as a dict.

    Raises:
        ValueError: malformed JSON (naming the line and column), or not a COCO dict.
    """
    coco = read_json(path)
    if not isinstance(coco, dict) or not {"images", "annotations"} <= set(coco):
        raise ValueError(
            f"{path} is not a COCO file (no images and annotations lists); export COCO "
            "instance segmentation, or choose another --format"
        )
    return coco
