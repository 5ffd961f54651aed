"""Preparation: a labelled data folder -> a stratified ``split.csv`` (+ an optional uint8 cache).

This is the original test task's data-preparation notebook as a function and a command::

    steelseg-prepare --data-dir DIR --out OUT [--n-images 1000] [--split 800,100,100] [--seed 42]

``DIR`` is in one of two layouts:

* Kaggle: ``train.csv`` (either layout, see :func:`steelseg.rle.read_annotations`) and
  ``train_images/``; images in ``train_images/`` without rows are defect-free.
* folder (a plant's own data, :func:`folder_labels`): ``images/`` (any size, grey or colour)
  and ``masks/`` with one PNG per image of the same stem, pixel value = class id (0 =
  background, at most ``n_classes``).

``OUT/split.csv`` has one row per selected image: ``ImageId, split, EncodedPixels`` (the
classes merged into one binary mask, RLE at the image's own size), ``defect_pixels``,
``classes`` (e.g. ``"1 3"``), ``n_classes``, ``height``, ``width`` and one RLE per class.
``OUT/prepare.json`` records the parameters and the source so a later run can tell whether the
split still matches its data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from steelseg import rle
from steelseg.io import (
    IMAGE_SUFFIXES,
    atomic_dir,
    atomic_write_text,
    check_image,
    check_space,
    file_digest,
    locked,
    read_grey,
    remove_stale,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_CHOICES = (*SPLITS, "all")  # "all": every image of a split file or folder
SPLIT_COLUMNS = [
    "ImageId",
    "split",
    "EncodedPixels",
    "defect_pixels",
    "classes",
    "n_classes",
    "height",
    "width",
]
#: 3: image size and a column of RLE per class (``EncodedPixels_1`` ...); 2: split_sha256
PREPARE_VERSION = 3  # bump when split.csv's content for the same inputs changes
KAGGLE_IMAGES = "train_images"  # the Kaggle layout: train.csv + train_images/
FOLDER_IMAGES, FOLDER_MASKS = "images", "masks"  # the folder layout: images/ + masks/<stem>.png
MAX_CLASSES = 255  # class ids are 8-bit mask values


def class_columns(n_classes: int) -> list[str]:
    """split.csv's per-class RLE columns: ``EncodedPixels_1`` ... ``EncodedPixels_<n>``."""
    return [f"EncodedPixels_{c}" for c in range(1, n_classes + 1)]


def split_columns(labels: pd.DataFrame) -> list[str]:
    """The columns of split.csv for a labels table: :data:`SPLIT_COLUMNS` plus its classes'."""
    return SPLIT_COLUMNS + class_columns(data_classes(list(labels.columns)))


def data_classes(columns: Sequence[str]) -> int:
    """How many classes a split.csv (or labels table) with these columns has per-class masks
    for; 0: merged masks only (binary labels)."""
    n = 0
    while f"EncodedPixels_{n + 1}" in columns:
        n += 1
    return n


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


# ----------------------------------------------------------------------------- labels
def list_images(data_dir: Path) -> list[str]:
    """Sorted image file names in the data root's image folder (:func:`image_dir`)."""
    folder = image_dir(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} does not exist: data_dir must be a Kaggle-layout folder with train.csv and "
            "train_images/ (download: kaggle competitions download -c severstal-steel-defect-"
            "detection), or run `steelseg-synth --out DIR` for synthetic data, or a folder "
            "with images/ and masks/ (one PNG per image, pixel value = class id)"
        )
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


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
        DataFrame with :data:`SPLIT_COLUMNS` except ``split``, sorted by ImageId.

    Raises:
        FileNotFoundError: train.csv or train_images/ is missing, or train.csv names images
            that are not in train_images/ (unless ``skip_bad``).
        ValueError: train.csv is malformed, or there are no images.
    """
    if is_folder_layout(data_dir):
        return folder_labels(data_dir, n_classes, skip_bad)
    images = list_images(data_dir)
    if not images:
        raise ValueError(f"{data_dir / 'train_images'} holds no images (*.jpg, *.png)")
    ann = rle.read_annotations(data_dir / "train.csv", any_class=any_class)
    missing = sorted(set(ann.attrs["image_ids"]) - set(images))
    if missing:
        _missing(
            missing,
            f"train.csv names {{n}} image(s) missing from {data_dir / 'train_images'}",
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


def _missing(names: list[str], what: str, skip_bad: bool, limit: int = 10) -> None:
    """Raise ``FileNotFoundError`` listing ``names``; with ``skip_bad``, warn they are dropped.

    ``what`` says what is wrong with ``{n}`` standing for how many; ``limit`` names are listed.
    """
    listed = f"{', '.join(names[:limit])}{' ...' if len(names) > limit else ''}"
    msg = f"{what.format(n=len(names))}: {listed}"
    if not skip_bad:
        raise FileNotFoundError(msg + " (pass --skip-bad / data.skip_bad=true to drop them)")
    log.warning("%s; dropping them", msg)


def mask_path(root: str | os.PathLike, image_id: str) -> Path:
    """The folder layout's mask of an image: ``root/masks/<stem>.png``."""
    return Path(root) / FOLDER_MASKS / f"{Path(image_id).stem}.png"


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a folder-layout mask PNG: uint8 (H, W), pixel value = class id.

    8-bit grey, palette (the palette index is the class id) and 1-bit PNGs are read as they
    are stored; without Pillow (a torch-free deployment) OpenCV reads them (1-bit as 0/255).

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
) -> tuple[tuple[int, int], dict[int, str], str, int]:
    """One image of the folder layout: (shape, {class id: RLE}, merged RLE, defect pixels)."""
    path = mask_path(root, image_id)
    mask = read_mask(path)
    size = _image_size(root / FOLDER_IMAGES / image_id)
    if size is not None and size != mask.shape:
        raise ValueError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"{root / FOLDER_IMAGES / image_id} is {size[1]}x{size[0]} (width x height); a mask "
            "must have its image's size"
        )
    counts = np.bincount(mask.ravel(), minlength=MAX_CLASSES + 1)  # pixels per value
    present = np.flatnonzero(counts[1:]) + 1
    if n_classes is not None and len(present) and present[-1] > n_classes:
        value = int(present[-1])
        hint = "; 0/255 masks must be saved as 0/1" if value == 255 else ""
        raise ValueError(
            f"mask {path} holds the value {value}, above data.n_classes={n_classes} (pixel "
            f"value = class id, 0 = background); set data.n_classes (steelseg-prepare "
            f"--n-classes) to the number of classes{hint}"
        )
    by_class = {int(c): rle.encode(mask == c) for c in present}
    return mask.shape, by_class, rle.encode(mask), int(counts[1:].sum())


def folder_labels(
    root: str | os.PathLike, n_classes: int | None = 1, skip_bad: bool = False
) -> pd.DataFrame:
    """One row per image of a folder layout: ``images/`` plus ``masks/<stem>.png``.

    Each mask is a single-channel 8-bit PNG (grey or palette) of its image's height x width;
    pixel value = class id, 0 = background.

    Args:
        root: The folder holding ``images/`` and ``masks/``.
        n_classes: The most classes a mask may hold (1: binary masks); None: as many as the
            largest value found (reading labels for evaluation, not for training).
        skip_bad: Drop images without a mask and masks without an image, with a warning.

    Returns:
        Like :func:`image_labels`: :data:`SPLIT_COLUMNS` except ``split``, each image's own
        ``height`` and ``width``, and ``EncodedPixels_1`` ... ``EncodedPixels_<n_classes>``
        (RLE at the image's size), sorted by ImageId.

    Raises:
        FileNotFoundError: ``images/`` or ``masks/`` is missing; an image has no mask or a
            mask no image (unless ``skip_bad``).
        ValueError: ``n_classes`` out of range; no images or no masks; two images share a
            stem; a mask unreadable, not single-channel, of another size than its image, or
            holding a value above ``n_classes``.
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
        _missing(
            no_mask, f"{{n}} image(s) in {images_dir} have no mask in {masks_dir}", skip_bad, 5
        )
        images = [i for i in images if Path(i).stem in masks]
    no_image = sorted(masks[m] for m in masks if m not in stems)
    if no_image:
        _missing(
            no_image, f"{{n}} mask(s) in {masks_dir} have no image in {images_dir}", skip_bad, 5
        )
    if not images:
        raise ValueError(f"no image of {images_dir} has its mask in {masks_dir}")
    # PNG and header decoding release the GIL, so threads scale over cores.
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(lambda i: _folder_row(root, i, n_classes), images))
    found = max((max(by_class, default=0) for _, by_class, _, _ in rows), default=0)
    k = int(n_classes) if n_classes is not None else max(1, found)
    df = pd.DataFrame({"ImageId": images})
    df["EncodedPixels"] = [merged for _, _, merged, _ in rows]
    df["defect_pixels"] = [pixels for _, _, _, pixels in rows]
    df["classes"] = [" ".join(map(str, sorted(by_class))) for _, by_class, _, _ in rows]
    df["n_classes"] = [len(by_class) for _, by_class, _, _ in rows]
    df["height"] = [shape[0] for shape, _, _, _ in rows]
    df["width"] = [shape[1] for shape, _, _, _ in rows]
    for c, col in enumerate(class_columns(k), start=1):
        df[col] = [by_class.get(c, "") for _, by_class, _, _ in rows]
    return df


TRAIN_CSV_DIGEST, MASKS_DIGEST = "train_csv_sha256", "masks_sha256"  # keys of prepare.json


def labels_digest(root: str | os.PathLike) -> tuple[str, str]:
    """What prepare.json records to tell whether a data folder's labels changed: the key and a
    short sha256 of ``train.csv`` (Kaggle layout) or of ``masks/`` (every PNG's name and
    bytes: folder layout)."""
    root = Path(root)
    if not is_folder_layout(root):
        return TRAIN_CSV_DIGEST, file_digest(root / "train.csv")
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


def image_shapes(labels: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """{ImageId: (height, width)} of a labels table or split: each image's own size."""
    return {i: (int(h), int(w)) for i, h, w in labels[["ImageId", "height", "width"]].values}


# ----------------------------------------------------------------------------- selection
def _systematic(order: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``k`` of ``order`` at evenly spaced positions (stratified when ``order`` is)."""
    n = len(order)
    if k >= n:
        return order
    pos = np.floor((np.arange(k) + rng.random()) * n / k).astype(int)
    return order[pos]


def _stratified_order(keys: pd.Series, rng: np.random.Generator) -> np.ndarray:
    """Row positions sorted by stratum, shuffled within each stratum."""
    tiebreak = rng.permutation(len(keys))
    return np.lexsort((tiebreak, keys.astype(str).to_numpy()))


def stratified_pick(keys: pd.Series, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``k`` rows chosen so each stratum of ``keys`` keeps its share (+-1)."""
    return np.sort(_systematic(_stratified_order(keys, rng), k, rng))


def assign_splits(keys: pd.Series, sizes: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """Label rows ``train``/``val``/``test`` with the given counts, stratified by ``keys``.

    The last split of ``sizes`` takes whatever the others leave.
    """
    labels = np.full(len(keys), list(sizes)[-1], dtype=object)
    free = np.arange(len(keys))
    for name, k in list(sizes.items())[:-1]:
        chosen = free[stratified_pick(keys.iloc[free].reset_index(drop=True), k, rng)]
        labels[chosen] = name
        free = np.setdiff1d(free, chosen)
    return labels


def parse_split(text: str) -> tuple[float, ...]:
    """``"800,100,100"`` or ``"0.8,0.1,0.1"`` -> numbers for train, val, test."""
    try:
        parts = tuple(float(x) for x in str(text).split(","))
    except ValueError:
        raise ValueError(f"split {text!r} must be three numbers: train,val,test") from None
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        raise ValueError(f"split {text!r} must be three non-negative numbers: train,val,test")
    return parts


def split_counts(parts: Sequence[float], n: int) -> dict[str, int]:
    """Turn fractions (summing to 1) or counts (summing to ``n``) into counts."""
    total = sum(parts)
    if abs(total - 1.0) < 1e-6:
        counts = [int(round(p * n)) for p in parts]
        counts[0] = n - counts[1] - counts[2]
    elif all(float(p).is_integer() for p in parts) and int(total) == n:
        counts = [int(p) for p in parts]
    else:
        raise ValueError(
            f"split {','.join(f'{p:g}' for p in parts)} must be fractions summing "
            f"to 1 or counts summing to the {n} selected images"
        )
    return dict(zip(SPLITS, counts))


def select(
    labels: pd.DataFrame,
    n_images: int | None,
    split: Sequence[float],
    seed: int,
    only_defective: bool = False,
    val_fraction: float = 0.1,
) -> pd.DataFrame:
    """Choose images and give each a split, stratified by defect presence and class.

    Args:
        labels: Output of :func:`image_labels`.
        n_images: How many images to use; None for all.
        split: train/val/test as fractions or counts.
        seed: Seed of every random choice here.
        only_defective: The original task's protocol: only images with a defect (every
            multi-class image, then single-class ones at random up to ``n_images``); test is
            stratified by number of classes, and validation is ``val_fraction`` of train.
        val_fraction: Used with ``only_defective``.

    Returns:
        The selected rows of ``labels`` with a ``split`` column, in ImageId order.
    """
    rng = np.random.default_rng(seed)
    pool = labels[labels["n_classes"] > 0] if only_defective else labels
    pool = pool.reset_index(drop=True)
    n = len(pool) if n_images is None else int(n_images)
    if n < 1:
        raise ValueError(f"n_images must be >= 1 or 'all', got {n_images}")
    if n > len(pool):
        what = "defective images" if only_defective else "images"
        raise ValueError(
            f"asked for {n} images but the data has {len(pool)} {what}; "
            "use --n-images all (data.n_images=null) or a smaller number"
        )
    if only_defective:
        multi = np.flatnonzero(pool["n_classes"].to_numpy() > 1)
        single = np.flatnonzero(pool["n_classes"].to_numpy() == 1)
        if len(multi) >= n:
            take = rng.choice(multi, n, replace=False)
        else:
            take = np.concatenate([multi, rng.choice(single, n - len(multi), replace=False)])
        chosen = pool.iloc[np.sort(take)].reset_index(drop=True)
        key = chosen["n_classes"]
        sizes = split_counts(split, n)
        test = sizes["test"]
        val = int(round(val_fraction * (n - test))) if sizes["val"] == 0 else sizes["val"]
        split_label = assign_splits(key, {"test": test, "val": val, "train": n - test - val}, rng)
    else:
        key = pool["classes"]  # "" (clean), "3", "1 3", ...: presence and class together
        chosen = pool.iloc[stratified_pick(key, n, rng)].reset_index(drop=True)
        sizes = split_counts(split, n)
        split_label = assign_splits(
            chosen["classes"],
            {"test": sizes["test"], "val": sizes["val"], "train": sizes["train"]},
            rng,
        )
    chosen.insert(1, "split", split_label)
    return chosen


def apply_split_file(
    labels: pd.DataFrame, split_file: Path, val_fraction: float, seed: int, skip_bad: bool = False
) -> pd.DataFrame:
    """Use a published ``ImageId,split`` list; carve ``val`` from ``train`` when it has none."""
    spec = pd.read_csv(split_file, dtype=str, keep_default_na=False)
    if not {"ImageId", "split"} <= set(spec.columns):
        raise ValueError(f"{split_file} has columns {list(spec.columns)}; expected ImageId,split")
    for i, (iid, s) in enumerate(zip(spec["ImageId"], spec["split"])):
        rle.check_image_id(iid, f"{split_file.name} line {i + 2}")
        if s not in SPLITS:
            raise ValueError(f"{split_file.name} line {i + 2}: split {s!r} is not one of {SPLITS}")
    if spec["ImageId"].duplicated().any():
        dup = spec.loc[spec["ImageId"].duplicated(), "ImageId"].iloc[0]
        raise ValueError(f"{split_file.name}: ImageId {dup!r} is listed twice")
    missing = sorted(set(spec["ImageId"]) - set(labels["ImageId"]))
    if missing:
        _missing(
            missing, f"{split_file.name} lists {{n}} image(s) not in the data folder", skip_bad
        )
        spec = spec[~spec["ImageId"].isin(missing)]
    chosen = labels.merge(spec[["ImageId", "split"]], on="ImageId", how="inner")
    if not (chosen["split"] == "val").any():
        train = np.flatnonzero(chosen["split"].to_numpy() == "train")
        k = int(round(val_fraction * len(train)))
        key = chosen["n_classes"].iloc[train].reset_index(drop=True)
        pick = train[stratified_pick(key, k, np.random.default_rng(seed))]
        chosen.loc[pick, "split"] = "val"
    return chosen[split_columns(chosen)]


# ----------------------------------------------------------------------------- prepare
#: Split files shipped with steelseg, usable by name (see steelseg/splits/README.md).
PACKAGED_SPLITS = {"reference": Path(__file__).parent / "splits" / "reference_split.csv"}
#: Deprecated names of packaged splits, still accepted: ``seed`` was the reference split's name.
SPLIT_ALIASES = {"seed": "reference"}


def resolve_split_file(split_file: str | os.PathLike) -> Path:
    """A packaged split's name (``reference``; old name ``seed``) or a path -> an existing file."""
    name = SPLIT_ALIASES.get(str(split_file), str(split_file))
    path = PACKAGED_SPLITS.get(name, Path(split_file))
    if not path.is_file():
        raise FileNotFoundError(
            f"split file {split_file} not found (packaged ones: {sorted(PACKAGED_SPLITS)})"
        )
    return path


def prepare(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    n_images: int | None = 1000,
    split: Sequence[float] | str | None = None,
    seed: int = 42,
    only_defective: bool = False,
    split_file: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    skip_bad: bool = False,
    cache_size: tuple[int, int] | None = None,
    n_classes: int = 1,
) -> Path:
    """Write ``out/split.csv`` (and ``out/prepare.json``); optionally a uint8 cache.

    Args:
        data_dir: Kaggle-layout folder (``train.csv``, ``train_images/``) or folder layout
            (``images/``, ``masks/``: see :func:`folder_labels`).
        out: Output folder.
        n_images: Images to select; None for all. Ignored with ``split_file``.
        split: train,val,test as fractions or counts (string ``"800,100,100"`` accepted);
            None: 0.8,0.1,0.1, or with ``only_defective`` the original task's 0.9,0,0.1 (a val
            share of 0 means ``val_fraction`` of train).
        seed: Seed of the selection and of the split.
        only_defective: The original task's protocol (see :func:`select`).
        split_file: CSV of ``ImageId,split`` to reproduce a published split.
        val_fraction: Share of train carved out as validation when the protocol or split file
            has no validation images.
        skip_bad: Drop missing/unreadable/wrong-size images with a warning instead of failing.
        cache_size: (height, width) to also store decoded, resized images and masks at.
        n_classes: The classes of a folder layout's masks (values 1..n_classes); unused by
            the Kaggle layout.

    Returns:
        Path of ``split.csv``.
    """
    data_dir, out = Path(data_dir), Path(out)
    split = default_split(split, only_defective)
    if cache_size is not None and (len(cache_size) != 2 or min(cache_size) < 1):
        raise ValueError(f"cache size must be (height, width) >= 1, got {cache_size}")
    labels = image_labels(data_dir, skip_bad, n_classes=n_classes)
    if split_file is not None:
        chosen = apply_split_file(
            labels, resolve_split_file(split_file), val_fraction, seed, skip_bad
        )
    else:
        chosen = select(labels, n_images, split, seed, only_defective, val_fraction)
    bad = check_images(data_dir, chosen["ImageId"], image_shapes(chosen))
    if bad:
        listed = "; ".join(f"{k} ({v})" for k, v in list(bad.items())[:10])
        msg = f"{len(bad)} selected image(s) cannot be used: {listed}"
        if not skip_bad:
            raise ValueError(msg + " (pass --skip-bad / data.skip_bad=true to drop them)")
        log.warning("%s; dropping them", msg)
        chosen = chosen[~chosen["ImageId"].isin(bad)]
    if not (chosen["split"] == "train").any():
        raise ValueError("the split has no training images; use more images or another --split")
    chosen = chosen.sort_values(["split", "ImageId"], key=_split_order).reset_index(drop=True)
    text = chosen[split_columns(chosen)].to_csv(index=False)
    digest_key, digest = labels_digest(data_dir)
    meta = {
        "version": PREPARE_VERSION,
        "data_dir": str(data_dir.resolve()),
        digest_key: digest,
        "params": prepare_params(
            n_images,
            split,
            seed,
            only_defective,
            split_file,
            val_fraction,
            skip_bad,
            layout_n_classes(data_dir, n_classes),
        ),
        "counts": chosen["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict(),
        "split_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],  # = file_digest(split.csv)
    }
    with locked(out, "the prepared split"):
        for name in ("split.csv", "prepare.json"):
            remove_stale(out, name)  # what a killed writer left
        if complete_split(out) == meta:
            log.info("%s already holds this split; reusing it", out)
        else:
            _write_split(data_dir, out, text, meta, cache_size)
        if cache_size is not None:
            build_cache(data_dir, out, cache_size)  # reused too, when it matches
    return out / "split.csv"


def _write_split(
    data_dir: Path, out: Path, text: str, meta: dict, cache_size: tuple[int, int] | None
) -> None:
    """split.csv, the cache, then prepare.json: the marker that the whole split is there."""
    (out / "prepare.json").unlink(missing_ok=True)  # incomplete until it is written again
    atomic_write_text(out / "split.csv", text)
    if cache_size is not None:
        try:
            build_cache(data_dir, out, cache_size)
        except BaseException:  # no split without the cache that was asked for
            (out / "split.csv").unlink(missing_ok=True)
            raise
    atomic_write_text(out / "prepare.json", json.dumps(meta, indent=2))


def complete_split(out: str | os.PathLike) -> dict | None:
    """``prepare.json`` of the whole prepared split in ``out``, or None.

    ``prepare.json`` is written last and removed first whenever the split is written again, so
    a ``split.csv`` without it was cut short (a killed or failed run): readers prepare it again
    or refuse it, never use it. Its ``split_sha256`` tells whether split.csv was edited since.
    """
    out = Path(out)
    try:
        meta = json.loads((out / "prepare.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and (out / "split.csv").is_file() else None


def default_split(split: Sequence[float] | str | None, only_defective: bool) -> tuple[float, ...]:
    """The split as numbers; None gives the default of the protocol."""
    if split is None:
        return (0.9, 0.0, 0.1) if only_defective else (0.8, 0.1, 0.1)
    return parse_split(split) if isinstance(split, str) else tuple(float(x) for x in split)


def _split_order(col: pd.Series) -> pd.Series:
    return col.map({s: i for i, s in enumerate(SPLITS)}) if col.name == "split" else col


def prepare_params(
    n_images, split, seed, only_defective, split_file, val_fraction, skip_bad, n_classes=None
):
    """The parameters that decide split.csv's content, as stored in prepare.json.

    ``n_classes``: a folder layout's (:func:`layout_n_classes`); None (the Kaggle layout)
    leaves it out, so Kaggle splits keep their folders and prepare.json.
    """
    parts = default_split(split, only_defective)
    params = {
        "n_images": None if split_file else n_images,
        "split": None if split_file else list(parts),
        "seed": int(seed),
        "only_defective": bool(only_defective) and not split_file,
        "split_file": file_digest(resolve_split_file(split_file)) if split_file else None,
        "val_fraction": float(val_fraction),
        "skip_bad": bool(skip_bad),
    }
    if n_classes is not None:
        params["n_classes"] = int(n_classes)
    return params


def default_prepared_dir(root: str | os.PathLike, params: dict[str, Any]) -> Path:
    """Where a split made with ``params`` (:func:`prepare_params`) lives by default:
    ``root/prepared/split-<hash of the parameters>``."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return Path(root) / "prepared" / f"split-{key}"


def labelled_images(
    root: str | os.PathLike, split_csv: str | os.PathLike | None = None, split: str = "all"
) -> tuple[list[str], list[Path], MaskReader]:
    """The images of a split (or of a whole folder) with their full-resolution masks.

    Args:
        root: Kaggle-layout folder (``train_images/``, ``train.csv``) or folder layout
            (``images/``, ``masks/``).
        split_csv: A prepared ``split.csv``; None: every labelled image of ``root`` with its
            mask from ``root/train.csv`` or ``root/masks/`` (no preparation needed; only with
            ``split="all"``).
        split: ``train``, ``val``, ``test``, or ``all`` (every row).

    Returns:
        ``(image_ids, image_paths, mask_of)``; ``mask_of(image_id)`` is the merged defect
        mask at the image's own size (bool), ``mask_of(image_id, classes=True)`` the class
        mask: uint8, class id per pixel (1 for any class in binary labels), 0 where clean.

    Raises:
        FileNotFoundError: the folder or split file is missing.
        ValueError: unknown split, malformed split file, or an empty split.
    """
    if split not in SPLIT_CHOICES:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLIT_CHOICES)}")
    root = Path(root)
    if not image_dir(root).is_dir():
        raise FileNotFoundError(
            f"data folder {root} has no train_images/ (nor images/); pass --data-root with the "
            "Kaggle-layout or images/ + masks/ folder the model was trained on"
        )
    if split_csv is None:
        if split != "all":
            raise ValueError(f"split {split!r} needs a prepared split.csv; pass --split-file")
        rows = image_labels(root, any_class=True, n_classes=None)  # classes: as the masks hold
        where = root / (FOLDER_MASKS if is_folder_layout(root) else "train.csv")
    else:
        where = Path(split_csv)
        if not where.is_file():
            raise FileNotFoundError(
                f"split file {where} does not exist; pass --split-file (a split.csv written by "
                "steelseg-prepare or steelseg-train), or --split all for every labelled image"
            )
        rows = pd.read_csv(where, dtype=str, keep_default_na=False)
        missing = {"ImageId", "split", "EncodedPixels"} - set(rows.columns)
        if missing:
            raise ValueError(
                f"{where} lacks columns {sorted(missing)}; expected a steelseg split.csv"
            )
        if split != "all":
            rows = rows[rows["split"] == split]
    if rows.empty:
        raise ValueError(f"split {split!r} of {where} holds no images")
    ids = rows["ImageId"].tolist()
    for i, iid in enumerate(ids):  # an edited split must not escape the data folder
        rle.check_image_id(iid, f"{where.name} line {i + 2}")
    folder = image_dir(root)
    return ids, [folder / i for i in ids], MaskReader(rows, where)


class MaskReader:
    """The ground truth of labelled images (see :func:`labelled_images`), read on demand.

    ``reader(image_id)`` is the merged defect mask (bool, the image's own size);
    ``reader(image_id, classes=True)`` the class mask (uint8, class id per pixel, 0 = clean).
    :attr:`n_classes` is how many classes the labels tell apart (0: merged masks only).
    """

    def __init__(self, rows: pd.DataFrame, where: Path) -> None:
        self.records = dict(zip(rows["ImageId"], rows.to_dict("records")))
        self.where = where
        self.n_classes = data_classes(list(rows.columns))

    def check(self, source: Any, image: np.ndarray) -> None:
        """Raise ``ValueError`` when a read image (a ``Source`` with its ``image_id``) is not
        the size its labels were made for (``Predictor.predict_files``'s ``check``)."""
        h, w = row_shape(self.records[source.image_id])
        if image.shape != (h, w):
            raise ValueError(f"it is {image.shape[1]}x{image.shape[0]}, but its mask is {w}x{h}")

    def __call__(self, image_id: str, classes: bool = False) -> np.ndarray:
        r = self.records[image_id]
        where = f"{self.where.name} ({image_id})"
        if classes:
            return rle.class_mask(row_masks(r), row_shape(r), where=where)
        return rle.decode(r["EncodedPixels"], row_shape(r), where=where) > 0


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


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    """A split.csv as strings (RLE columns never NaN), sizes as integers."""
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in ("defect_pixels", "n_classes", "height", "width"):
        if col in rows.columns:
            rows[col] = pd.to_numeric(rows[col]).astype(int)
    return rows


# ----------------------------------------------------------------------------- cache
def cache_dir(out: Path, size: tuple[int, int]) -> Path:
    """Folder of the uint8 cache of a prepared split at ``size`` (height, width)."""
    return Path(out) / f"cache_{size[0]}x{size[1]}"


def cache_matches(folder: Path, split_digest: str) -> bool:
    """Whether ``folder`` holds a complete cache of the split.csv with this digest."""
    stamp = folder / "split.sha256"
    return stamp.exists() and stamp.read_text() == split_digest and (folder / "masks.npy").exists()


def row_masks(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The RLEs of a split.csv row: one per class (``EncodedPixels_1`` ...), or the merged one
    alone when the split holds binary labels."""
    n = data_classes(list(row.keys()))
    return tuple(row[c] for c in class_columns(n)) if n else (row["EncodedPixels"],)


def row_shape(row: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) of a split.csv row's image (256x1600 in splits without the columns)."""
    if "height" in row and str(row["height"]) != "":
        return int(row["height"]), int(row["width"])
    return rle.SHAPE


def load_sample(
    data_dir: Path,
    image_id: str,
    encoded: Sequence[str],
    size: tuple[int, int] | None,
    shape: tuple[int, int] = rle.SHAPE,
):
    """Decode one image and its class mask, resized to ``size`` (height, width) when given.

    Args:
        encoded: The image's RLE per class (see :func:`row_masks`).
        shape: The image's own (height, width), which the RLE indexes.

    Returns:
        (image uint8 (H, W), mask uint8 (H, W): class id per pixel, 0 = background).
    """
    img = read_grey(image_dir(data_dir) / image_id)
    if img.shape != tuple(shape):
        raise ValueError(
            f"image {image_id} is {img.shape[1]}x{img.shape[0]}, expected {shape[1]}x{shape[0]}"
        )
    mask = rle.class_mask(encoded, tuple(shape), where=image_id)
    if size is not None and tuple(size) != tuple(shape):
        h, w = size
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return img, mask


def build_cache(
    data_dir: Path, out: Path, size: tuple[int, int], workers: int | None = None
) -> Path:
    """Decode every image of ``out/split.csv`` once into ``images.npy``/``masks.npy``.

    Both are (N, H, W) uint8 in split.csv order (masks: class id per pixel), readable as memory maps. Written under a
    temporary folder name and renamed, so an interrupted build leaves no cache behind.
    """

    out = Path(out)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"cache size must be (height, width) >= 1, got {size}")
    final = cache_dir(out, size)
    with locked(out, "the prepared split"):  # the split's lock: one process builds its caches
        digest = file_digest(out / "split.csv")
        if cache_matches(final, digest):
            return final
        remove_stale(out, final.name)  # a killed build's temporary folder
        if final.exists():  # made for an earlier split.csv
            shutil.rmtree(final)
        split = read_split(out / "split.csv")
        _build_cache(data_dir, final, split, size, digest, workers)
    return final


def _build_cache(
    data_dir: Path,
    final: Path,
    split: pd.DataFrame,
    size: tuple[int, int],
    digest: str,
    workers: int | None,
) -> None:
    """Write the cache folder ``final`` (see :func:`build_cache`), under its lock."""
    from tqdm import tqdm

    n, (h, w) = len(split), size
    check_space(final, 2 * n * h * w + 4096)  # images, masks, headers: say so up front
    with atomic_dir(final) as tmp:
        images = _allocated(tmp / "images.npy", (n, h, w))
        masks = _allocated(tmp / "masks.npy", (n, h, w))
        rows = split.to_dict("records")

        def work(i: int) -> None:
            r = rows[i]
            images[i], masks[i] = load_sample(
                data_dir, r["ImageId"], row_masks(r), size, row_shape(r)
            )

        # OpenCV releases the GIL while decoding, so threads scale over cores.
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            list(
                tqdm(
                    pool.map(work, range(n)),
                    total=n,
                    desc=f"cache {h}x{w}",
                    unit="img",
                    disable=n < 50,
                )
            )
        images.flush()
        masks.flush()
        (tmp / "split.sha256").write_text(digest)


def _allocated(path: Path, shape: tuple[int, int, int]) -> np.memmap:
    """A uint8 ``.npy`` memory map whose disk blocks are reserved now: a full disk is an
    ``OSError`` here, not a crash (SIGBUS) when a page of a sparse file is written later."""
    array = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return array
