"""The two layouts of labelled data, and the labels table both are read into.

* Kaggle: ``train.csv`` (either layout, see :func:`steelseg.rle.read_annotations`) and
  ``train_images/``; images in ``train_images/`` without rows are defect-free.
* folder (a plant's own data, :func:`folder_labels`): ``images/`` (any size, grey or colour)
  and ``masks/`` with one PNG per image of the same stem, pixel value = class id (0 =
  background, at most ``n_classes``), or a binary 0/255 mask (see :func:`mask_class_ids`).

:func:`image_labels` reads either into a labels table: one row per image with
:data:`LABEL_COLUMNS` (the classes merged into one binary mask, RLE at the image's own size)
and one RLE per class (``EncodedPixels_1`` ...). A prepared ``split.csv`` is such a table with
a ``split`` column (see :mod:`steelseg.prepare`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steelseg import rle
from steelseg.io import IMAGE_SUFFIXES, atomic_write_text, check_image, file_digest

log = logging.getLogger(__name__)

KAGGLE_IMAGES, KAGGLE_CSV = "train_images", "train.csv"  # the Kaggle layout
FOLDER_IMAGES, FOLDER_MASKS = "images", "masks"  # the folder layout: images/ + masks/<stem>.png
CLASSES_CSV = "classes.csv"  # the folder layout's class table: id,name,colour
MAX_CLASSES = 255  # class ids are 8-bit mask values
BINARY_DEFECT = 255  # the defect value of a 0/255 binary mask (public sets, labelling tools)
BINARY_THRESHOLD = 128  # an anti-aliased 0/255 mask: >= 128 (half of 255) is defect
#: A labels table's columns before the per-class RLEs (``EncodedPixels_1`` ...)
LABEL_COLUMNS = [
    "ImageId",
    "EncodedPixels",
    "defect_pixels",
    "classes",
    "n_classes",
    "height",
    "width",
]
TRAIN_CSV_DIGEST, MASKS_DIGEST = "train_csv_sha256", "masks_sha256"  # keys of prepare.json
MASKS_THRESHOLDED = "masks_thresholded"  # prepare.json: anti-aliased 0/255 masks (folder layout)


def image_dir(root: str | os.PathLike) -> Path:
    """The folder of a data root's labelled images: ``train_images/`` (Kaggle layout) or
    ``images/`` (folder layout, see :func:`folder_labels`)."""
    root = Path(root)
    if not (root / KAGGLE_IMAGES).is_dir() and (root / FOLDER_IMAGES).is_dir():
        return root / FOLDER_IMAGES
    return root / KAGGLE_IMAGES


def is_folder_layout(root: str | os.PathLike) -> bool:
    """Whether a data root is in the folder layout: ``images/`` or ``masks/``, no
    ``train_images/``."""
    root = Path(root)
    return not (root / KAGGLE_IMAGES).is_dir() and (
        (root / FOLDER_IMAGES).is_dir() or (root / FOLDER_MASKS).is_dir()
    )


def layout_n_classes(root: str | os.PathLike, n_classes: int | None) -> int | None:
    """The ``n_classes`` that decides a split of ``root``: the given one for the folder layout,
    None for the Kaggle layout (its train.csv names its classes)."""
    return int(n_classes) if n_classes is not None and is_folder_layout(root) else None


def list_images(data_dir: Path) -> list[str]:
    """Sorted image file names in the data root's image folder (:func:`image_dir`)."""
    folder = image_dir(data_dir)
    if not folder.is_dir():
        missing = folder if Path(data_dir).is_dir() else Path(data_dir)  # the outermost
        raise FileNotFoundError(
            f"{missing} does not exist: data_dir must be a Kaggle-layout folder with train.csv and "
            "train_images/ (download: kaggle competitions download -c severstal-steel-defect-"
            "detection), or run `steelseg-synth --out DIR` for synthetic data, or a folder "
            "with images/ and masks/ (one PNG per image, pixel value = class id)"
        )
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


# ----------------------------------------------------------------------------- labels tables
def class_columns(n_classes: int) -> list[str]:
    """A labels table's per-class RLE columns: ``EncodedPixels_1`` ... ``EncodedPixels_<n>``."""
    return [f"EncodedPixels_{c}" for c in range(1, n_classes + 1)]


def data_classes(columns: Sequence[str]) -> int:
    """How many classes a labels table (or split.csv) with these columns has per-class masks
    for; 0: merged masks only (binary labels)."""
    n = 0
    while f"EncodedPixels_{n + 1}" in columns:
        n += 1
    return n


def row_masks(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The RLEs of a labels table's row: one per class (``EncodedPixels_1`` ...), or the
    merged one alone when the labels are binary."""
    n = data_classes(list(row.keys()))
    return tuple(row[c] for c in class_columns(n)) if n else (row["EncodedPixels"],)


def row_shape(row: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) of a labels table's image (256x1600 in splits without the columns)."""
    if "height" in row and str(row["height"]) != "":
        return int(row["height"]), int(row["width"])
    return rle.SHAPE


def image_shapes(labels: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """{ImageId: (height, width)} of a labels table or split: each image's own size."""
    return {i: (int(h), int(w)) for i, h, w in labels[["ImageId", "height", "width"]].values}


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    """A split.csv (a labels table with a ``split`` column) as strings (RLE columns never
    NaN), sizes as integers."""
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in ("defect_pixels", "n_classes", "height", "width"):
        if col in rows.columns:
            rows[col] = pd.to_numeric(rows[col]).astype(int)
    return rows


def check_classes(model_classes: int, data_classes: int, where: str) -> None:
    """Refuse, in one line, a multi-class model on labels without the same classes.

    Args:
        model_classes: The model's output channels (1: defect classes merged, fits any labels).
        data_classes: Classes the labels tell apart (0: merged masks only).
        where: Names the labels in the message.
    """
    if model_classes > 1 and data_classes != model_classes:
        has = f"{data_classes} classes" if data_classes else "merged (binary) masks only"
        raise ValueError(
            f"the model has {model_classes} classes (model.classes={model_classes}) but {where} "
            f"has {has}; train or use a model with model.classes={data_classes or 1}"
        )


# ----------------------------------------------------------------------------- Kaggle layout
def image_labels(
    data_dir: Path, skip_bad: bool = False, any_class: bool = False, n_classes: int | None = 1
) -> pd.DataFrame:
    """One row per labelled image of a data folder with its merged and per-class masks.

    A folder with ``images/`` and ``masks/`` (no ``train_images/``) is read by
    :func:`folder_labels`; else it is a Kaggle-layout folder: every image of ``train_images/``,
    labelled by ``train.csv``. ``any_class`` also accepts ClassId 0 (binary labels of unknown
    class, as ``steelseg-pseudo`` writes them; see :func:`steelseg.rle.read_annotations`).

    Args:
        n_classes: The folder layout's classes (see :func:`folder_labels`); unused by the
            Kaggle layout.

    Returns:
        DataFrame with :data:`LABEL_COLUMNS` and the per-class RLEs, sorted by ImageId.

    Raises:
        FileNotFoundError: train.csv or train_images/ is missing, or train.csv names images
            that are not in train_images/ (unless ``skip_bad``).
        ValueError: train.csv is malformed, or there are no images.
    """
    if is_folder_layout(data_dir):
        return folder_labels(data_dir, n_classes, skip_bad)
    images = list_images(data_dir)
    if not images:
        raise ValueError(f"{data_dir / KAGGLE_IMAGES} holds no images (*.jpg, *.png)")
    ann = rle.read_annotations(data_dir / KAGGLE_CSV, any_class=any_class)
    missing = sorted(set(ann.attrs["image_ids"]) - set(images))
    if missing:
        report_missing(
            missing,
            f"{KAGGLE_CSV} names {{n}} image(s) missing from {data_dir / KAGGLE_IMAGES}",
            skip_bad,
        )
        ann = ann[~ann["ImageId"].isin(missing)]
    merged: dict[str, list[str]] = {}
    classes: dict[str, list[int]] = {}
    for iid, cid, enc in ann[["ImageId", "ClassId", "EncodedPixels"]].itertuples(index=False):
        merged.setdefault(iid, []).append(enc)
        classes.setdefault(iid, []).append(int(cid))
    df = pd.DataFrame({"ImageId": images})
    df["EncodedPixels"] = [rle.merge(merged.get(i, ())) for i in images]
    df["defect_pixels"] = [rle.area(s) for s in df["EncodedPixels"]]
    df["classes"] = [" ".join(map(str, sorted(classes.get(i, ())))) for i in images]
    df["n_classes"] = df["classes"].str.split().str.len().astype(int)
    df["height"], df["width"] = rle.SHAPE
    if not (ann["ClassId"] == rle.ANY_CLASS).any():  # per-class masks, unless any-class labels
        by_class = {(i, c): e for i, c, e in ann[["ImageId", "ClassId", "EncodedPixels"]].values}
        for c, col in enumerate(class_columns(rle.N_CLASSES), start=1):
            df[col] = [by_class.get((i, c), "") for i in images]
    return df


def report_missing(names: list[str], what: str, skip_bad: bool, limit: int = 10) -> None:
    """Raise ``FileNotFoundError`` listing ``names``; with ``skip_bad``, warn they are dropped.

    ``what`` says what is wrong with ``{n}`` standing for how many; ``limit`` names are listed.
    """
    listed = f"{', '.join(names[:limit])}{' ...' if len(names) > limit else ''}"
    msg = f"{what.format(n=len(names))}: {listed}"
    if not skip_bad:
        raise FileNotFoundError(msg + " (pass --skip-bad / data.skip_bad=true to drop them)")
    log.warning("%s; dropping them", msg)


# ----------------------------------------------------------------------------- folder layout
def mask_path(root: str | os.PathLike, image_id: str) -> Path:
    """The folder layout's mask of an image: ``root/masks/<stem>.png``."""
    return Path(root) / FOLDER_MASKS / f"{Path(image_id).stem}.png"


def read_mask(path: str | os.PathLike, n_classes: int | None = None) -> np.ndarray:
    """Read a folder-layout mask PNG as class ids: uint8 (H, W), 0 = background.

    Pixel values become class ids by :func:`mask_class_ids`, the one rule of every reader
    (prepare, the cache, evaluation, the writer's ground truth).

    Args:
        n_classes: The data's classes; None: as many as the mask holds (reading labels to
            evaluate or to draw).

    Raises:
        ValueError: unreadable, not single-channel (colour, 16-bit), or values that are
            neither class ids nor a binary 0/255 mask.
    """
    return mask_class_ids(_mask_pixels(path), n_classes, path)[0]


def mask_class_ids(
    pixels: np.ndarray, n_classes: int | None, where: str | os.PathLike
) -> tuple[np.ndarray, bool]:
    """A folder-layout mask's pixel values -> class ids, by the mask's set of values.

    * within 0..``n_classes``: class ids, as they are;
    * within {0, 255}: a binary mask (the convention of public defect sets and labelling
      tools' exports); 255 is the defect, class 1;
    * 255 and values in between, at least one above ``max(n_classes, 1)``: an anti-aliased
      0/255 mask (smoothed edges), thresholded at 128 (>= 128 is defect);
    * anything else, e.g. {0, 1, 255} (1 could be a class id, 255 a binary defect): refused.

    A binary mask (0/255, anti-aliased or not) is refused on data of ``n_classes`` > 1: it
    cannot say which class its defects are.

    Args:
        pixels: uint8 (H, W) as stored.
        n_classes: The data's classes; None: class ids up to 254 (255 is binary).
        where: Names the mask in messages.

    Returns:
        (uint8 (H, W) class ids, whether the mask was thresholded).

    Raises:
        ValueError: one line naming the mask, its values and the fix.
    """
    counts = np.bincount(pixels.ravel(), minlength=MAX_CLASSES + 1)  # pixels per value
    present = np.flatnonzero(counts[1:]) + 1
    limit = BINARY_DEFECT - 1 if n_classes is None else int(n_classes)
    if not len(present) or present[-1] <= limit:
        return pixels, False
    top = int(present[-1])
    if top != BINARY_DEFECT:
        raise ValueError(
            f"mask {where} holds the value {top}, above data.n_classes={n_classes} (pixel "
            f"value = class id, 0 = background); set data.n_classes (steelseg-prepare "
            "--n-classes) to the number of classes"
        )
    between = present[:-1]  # values other than 0 and 255
    stored = np.flatnonzero(counts).tolist()
    values = ", ".join(map(str, stored[:8])) + (" ..." if len(stored) > 8 else "")
    if len(between) and between[-1] <= max(n_classes or 1, 1):  # e.g. {0, 1, 255}
        ids = f"class ids (0..{n_classes})" if n_classes is not None else "class ids (0..254)"
        raise ValueError(
            f"mask {where} holds the values {{{values}}}: neither {ids} nor a binary 0/255 "
            "mask; save it with one convention (class ids, or 0 = background and 255 = defect)"
        )
    if n_classes is not None and n_classes > 1:
        raise ValueError(
            f"mask {where} is a binary 0/255 mask (values {{{values}}}) but data.n_classes="
            f"{n_classes}: a multi-class mask holds class ids 0..{n_classes}; save it with class "
            "ids, or set data.n_classes=1 (steelseg-prepare --n-classes 1) for binary masks"
        )
    return (pixels >= BINARY_THRESHOLD).astype(np.uint8), bool(len(between))


def _mask_pixels(path: str | os.PathLike) -> np.ndarray:
    """A folder-layout mask PNG's pixel values as stored: uint8 (H, W).

    8-bit grey, palette (the palette index is the class id) and 1-bit PNGs are read as they
    are stored; without Pillow (a torch-free deployment) OpenCV reads them (1-bit as 0/255,
    which :func:`mask_class_ids` reads as binary too).

    Raises:
        ValueError: unreadable, or not single-channel (colour, 16-bit).
    """
    path = Path(path)
    fix = "save it as a single-channel 8-bit PNG, pixel value = class id (0 = background)"
    try:
        from PIL import Image
    except ImportError:  # a deployment without Pillow
        Image = None
    if Image is None:
        import cv2

        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise ValueError(f"cannot read mask {path}; {fix}")
        if mask.ndim != 2 or mask.dtype != np.uint8:
            mode = "colour" if mask.ndim != 2 else str(mask.dtype)
            raise ValueError(f"mask {path} is {mode}, not single-channel 8-bit; {fix}")
        return mask
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("L", "P", "1"):
                return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated files
        raise ValueError(f"cannot read mask {path} ({type(e).__name__}); {fix}") from None
    raise ValueError(f"mask {path} has mode {mode}, not single-channel 8-bit; {fix}")


def _image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file from its header; None when it cannot be read (then
    :func:`check_images` names it)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:  # PIL raises many types for broken files
        return None
    return h, w


def _folder_row(
    root: Path, image_id: str, n_classes: int | None
) -> tuple[tuple[int, int], dict[int, str], str, int, bool]:
    """One image of the folder layout: (shape, {class id: RLE}, merged RLE, defect pixels,
    whether its mask was thresholded)."""
    path = mask_path(root, image_id)
    mask, thresholded = mask_class_ids(_mask_pixels(path), n_classes, path)
    size = _image_size(root / FOLDER_IMAGES / image_id)
    if size is not None and size != mask.shape:
        raise ValueError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"{root / FOLDER_IMAGES / image_id} is {size[1]}x{size[0]} (width x height); a mask "
            "must have its image's size"
        )
    counts = np.bincount(mask.ravel(), minlength=MAX_CLASSES + 1)  # pixels per class id
    present = np.flatnonzero(counts[1:]) + 1
    by_class = {int(c): rle.encode(mask == c) for c in present}
    return mask.shape, by_class, rle.encode(mask), int(counts[1:].sum()), thresholded


def folder_labels(
    root: str | os.PathLike, n_classes: int | None = 1, skip_bad: bool = False
) -> pd.DataFrame:
    """One row per image of a folder layout: ``images/`` plus ``masks/<stem>.png``.

    Each mask is a single-channel 8-bit PNG (grey or palette) of its image's height x width;
    pixel value = class id, 0 = background, or a binary 0/255 mask (anti-aliased ones are
    thresholded, with a warning: see :func:`mask_class_ids`).

    Args:
        root: The folder holding ``images/`` and ``masks/``.
        n_classes: The most classes a mask may hold (1: binary masks); None: as many as the
            largest value found (reading labels for evaluation, not for training).
        skip_bad: Drop images without a mask and masks without an image, with a warning.

    Returns:
        Like :func:`image_labels`: :data:`LABEL_COLUMNS` with each image's own
        ``height`` and ``width``, and ``EncodedPixels_1`` ... ``EncodedPixels_<n_classes>``
        (RLE at the image's size), sorted by ImageId.

    Raises:
        FileNotFoundError: ``images/`` or ``masks/`` is missing; an image has no mask or a
            mask no image (unless ``skip_bad``).
        ValueError: ``n_classes`` out of range; no images or no masks; two images share a
            stem; a mask unreadable, not single-channel, of another size than its image, or
            holding values that are neither class ids up to ``n_classes`` nor a binary mask.

    The returned table's ``attrs["masks_thresholded"]`` counts the anti-aliased masks.
    """
    root = Path(root)
    if n_classes is not None and not 1 <= int(n_classes) <= MAX_CLASSES:
        raise ValueError(
            f"data.n_classes={n_classes} must be 1..{MAX_CLASSES} (mask values are 8-bit)"
        )
    images_dir, masks_dir = root / FOLDER_IMAGES, root / FOLDER_MASKS
    if not masks_dir.is_dir():
        raise FileNotFoundError(
            f"{root} has {FOLDER_IMAGES}/ but no {FOLDER_MASKS}/: put one PNG mask per image in "
            f"{masks_dir} (same stem: {FOLDER_IMAGES}/a.jpg -> {FOLDER_MASKS}/a.png; pixel "
            "value = class id, 0 = background)"
        )
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"{root} has {FOLDER_MASKS}/ but no {FOLDER_IMAGES}/: put the image of each mask in "
            f"{images_dir} (same stem: {FOLDER_MASKS}/a.png <- {FOLDER_IMAGES}/a.jpg)"
        )
    images = list_images(root)
    if not images:
        raise ValueError(
            f"{images_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}); put the images there"
        )
    masks = {p.stem: p.name for p in masks_dir.iterdir() if p.suffix.lower() == ".png"}
    if not masks:
        raise ValueError(
            f"{masks_dir} holds no masks (*.png); put one PNG per image there (same stem, "
            "pixel value = class id, 0 = background)"
        )
    stems: dict[str, str] = {}
    for name in images:
        stem = Path(name).stem
        if stem in stems:
            raise ValueError(
                f"images {stems[stem]} and {name} in {images_dir} share the mask "
                f"{FOLDER_MASKS}/{stem}.png; rename one of them"
            )
        stems[stem] = name
    no_mask = [i for i in images if Path(i).stem not in masks]
    if no_mask:
        report_missing(
            no_mask, f"{{n}} image(s) in {images_dir} have no mask in {masks_dir}", skip_bad, 5
        )
        images = [i for i in images if Path(i).stem in masks]
    no_image = sorted(masks[m] for m in masks if m not in stems)
    if no_image:
        report_missing(
            no_image, f"{{n}} mask(s) in {masks_dir} have no image in {images_dir}", skip_bad, 5
        )
    if not images:
        raise ValueError(f"no image of {images_dir} has its mask in {masks_dir}")
    # PNG and header decoding release the GIL, so threads scale over cores.
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(lambda i: _folder_row(root, i, n_classes), images))
    shapes, by_classes, merged, pixels, thresholded = zip(*rows)
    found = max((max(by_class, default=0) for by_class in by_classes), default=0)
    k = int(n_classes) if n_classes is not None else max(1, found)
    df = pd.DataFrame({"ImageId": images})
    df["EncodedPixels"] = list(merged)
    df["defect_pixels"] = list(pixels)
    df["classes"] = [" ".join(map(str, sorted(by_class))) for by_class in by_classes]
    df["n_classes"] = [len(by_class) for by_class in by_classes]
    df["height"] = [shape[0] for shape in shapes]
    df["width"] = [shape[1] for shape in shapes]
    for c, col in enumerate(class_columns(k), start=1):
        df[col] = [by_class.get(c, "") for by_class in by_classes]
    smoothed = [i for i, t in zip(images, thresholded) if t]
    if smoothed:
        log.warning(
            "%d mask(s) of %s are anti-aliased 0/255 masks (values between 0 and 255, e.g. "
            "%s): thresholded at %d (>= %d is defect)",
            len(smoothed),
            masks_dir,
            mask_path(root, smoothed[0]).name,
            BINARY_THRESHOLD,
            BINARY_THRESHOLD,
        )
    df.attrs[MASKS_THRESHOLDED] = len(smoothed)  # prepare.json records it
    return df


# ----------------------------------------------------------------------------- class names
def read_classes(root: str | os.PathLike) -> dict[int, tuple[str, str]]:
    """A folder layout's class table ``root/classes.csv`` (``id,name,colour``, written by
    ``steelseg-import``): {class id: (name, colour ``#rrggbb`` or "")}; {} without one.

    Raises:
        ValueError: a malformed table (naming the file, the line and the fix).
    """
    import csv

    path = Path(root) / CLASSES_CSV
    if not path.is_file():
        return {}
    table: dict[int, tuple[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"id", "name"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} needs the columns id,name(,colour); write it again")
        for line, row in enumerate(reader, start=2):
            text, name = (row.get("id") or "").strip(), (row.get("name") or "").strip()
            if not text.isdigit() or not 1 <= int(text) <= MAX_CLASSES or not name:
                raise ValueError(
                    f"{path} line {line}: {row.get('id')!r},{row.get('name')!r} is not a class "
                    f"id 1..{MAX_CLASSES} and a name; fix the line"
                )
            if int(text) in table or name in (n for n, _ in table.values()):
                raise ValueError(f"{path} line {line}: class {text} {name!r} is listed twice")
            table[int(text)] = (name, (row.get("colour") or "").strip())
    return table


def class_names(root: str | os.PathLike | None, n_classes: int) -> dict[int, str]:
    """{class id: name} of classes 1..``n_classes``: the one place names come from.

    A folder layout names its classes in ``classes.csv`` (:func:`read_classes`); every other
    class (the Kaggle layout's 1..4, a folder without the table) is named by its id, and the
    one class of a binary model, without a table, ``defect``.
    """
    table = read_classes(root) if root is not None and Path(root).is_dir() else {}
    own = {1: "defect"} if int(n_classes) == 1 else {}
    return {c: table[c][0] if c in table else own.get(c, str(c)) for c in range(1, n_classes + 1)}


def write_classes(root: str | os.PathLike, classes: Mapping[int, tuple[str, str]]) -> None:
    """Write ``root/classes.csv`` (``id,name,colour``), atomically."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "name", "colour"])
    writer.writerows([c, name, colour] for c, (name, colour) in sorted(classes.items()))
    atomic_write_text(Path(root) / CLASSES_CSV, text.getvalue())


# ----------------------------------------------------------------------------- checks
def labels_digest(root: str | os.PathLike) -> tuple[str, str]:
    """What prepare.json records to tell whether a data folder's labels changed: the key and a
    short sha256 of ``train.csv`` (Kaggle layout) or of ``masks/`` (every PNG's name and
    bytes: folder layout)."""
    root = Path(root)
    if not is_folder_layout(root):
        return TRAIN_CSV_DIGEST, file_digest(root / KAGGLE_CSV)
    h = hashlib.sha256()
    masks = root / FOLDER_MASKS
    for path in sorted(p for p in masks.iterdir() if p.suffix.lower() == ".png"):
        data = path.read_bytes()
        h.update(f"{path.name}\0{len(data)}\0".encode())
        h.update(data)
    return MASKS_DIGEST, h.hexdigest()[:16]


def check_images(
    data_dir: Path,
    image_ids: Sequence[str],
    shapes: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, str]:
    """Images that are missing, unreadable, truncated or not of their size, with the reason.

    Reads each file's header only (see :func:`steelseg.io.check_image`).

    Args:
        shapes: (height, width) of each image (a labels table's ``height``, ``width``: see
            :func:`image_shapes`); None: 256x1600 (Severstal) for all.
    """
    bad, folder = {}, image_dir(data_dir)
    for iid in image_ids:
        reason = check_image(folder / iid, shapes.get(iid) if shapes is not None else rle.SHAPE)
        if reason is not None:
            bad[iid] = reason
    return bad
