"""Preparation: a labelled data folder -> a stratified ``split.csv`` (+ an optional uint8 cache).

This is the original test task's data-preparation notebook as a function and a command::

    steelseg-prepare --data-dir DIR --out OUT [--n-images 1000] [--split 800,100,100] [--seed 42]

``DIR`` is in the Kaggle or the folder layout (see :mod:`steelseg.layouts`). ``OUT/split.csv``
has one row per selected image: ``ImageId, split`` and the image's labels (:data:`SPLIT_COLUMNS`:
the classes merged into one binary mask, RLE at the image's own size, ``defect_pixels``,
``classes`` (e.g. ``"1 3"``), ``n_classes``, ``height``, ``width``) and one RLE per class.
``OUT/prepare.json`` records the parameters and the source so a later run can tell whether the
split still matches its data; :func:`prepared_dir_for` says where a run's split is prepared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steelseg import duplicates, layouts, rle
from steelseg.cache import build_cache
from steelseg.io import atomic_write_text, file_digest, locked, remove_stale

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_CHOICES = (*SPLITS, "all")  # "all": every image of a split file or folder
SPLIT_COLUMNS = ["ImageId", "split", *layouts.LABEL_COLUMNS[1:]]  # then one RLE column per class
#: 3: image size and a column of RLE per class (``EncodedPixels_1`` ...); 2: split_sha256
PREPARE_VERSION = 3  # bump when split.csv's content for the same inputs changes
#: The ``data`` settings that decide a split (:func:`prepare`'s arguments), with the values
#: training takes when a run's config leaves one out (:class:`steelseg.dataset.SteelDataModule`'s)
SPLIT_SETTINGS = {
    "n_images": 1000,
    "split": (0.8, 0.1, 0.1),
    "seed": 42,
    "only_defective": False,
    "split_file": None,
    "val_fraction": 0.1,
    "skip_bad": False,
    "n_classes": 1,
    "group_split": False,
}


def split_columns(labels: pd.DataFrame) -> list[str]:
    """The columns of split.csv for a labels table: :data:`SPLIT_COLUMNS` plus its classes'."""
    return SPLIT_COLUMNS + layouts.class_columns(layouts.data_classes(list(labels.columns)))


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
        labels: Output of :func:`steelseg.layouts.image_labels`.
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


def read_split_file(split_file: Path) -> pd.DataFrame:
    """An ``ImageId,split`` list (more columns may follow), checked line by line.

    Raises:
        ValueError: no ImageId and split columns, a bad ImageId, a side other than
            train/val/test, or an image listed twice; the file and line named.
    """
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
    return spec


def apply_split_file(
    labels: pd.DataFrame, split_file: Path, val_fraction: float, seed: int, skip_bad: bool = False
) -> pd.DataFrame:
    """Use a published ``ImageId,split`` list; carve ``val`` from ``train`` when it has none."""
    spec = read_split_file(split_file)
    missing = sorted(set(spec["ImageId"]) - set(labels["ImageId"]))
    if missing:
        layouts.report_missing(
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
    group_split: bool = False,
) -> Path:
    """Write ``out/split.csv`` (and ``out/prepare.json``); optionally a uint8 cache.

    Args:
        data_dir: Kaggle-layout folder (``train.csv``, ``train_images/``) or folder layout
            (``images/``, ``masks/``: see :func:`steelseg.layouts.folder_labels`).
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
        group_split: Keep each group of near-duplicate images (copies, flipped or rotated
            copies: :mod:`steelseg.duplicates`) on one side of the split
            (:func:`group_sides`); prepare.json records the groups and the images moved.

    Returns:
        Path of ``split.csv``.
    """
    data_dir, out = Path(data_dir), Path(out)
    split = default_split(split, only_defective)
    settings = {
        "n_images": n_images,
        "split": split,
        "seed": seed,
        "only_defective": only_defective,
        "split_file": split_file,
        "val_fraction": val_fraction,
        "skip_bad": skip_bad,
        "n_classes": n_classes,
        "group_split": group_split,
    }
    if cache_size is not None and (len(cache_size) != 2 or min(cache_size) < 1):
        raise ValueError(f"cache size must be (height, width) >= 1, got {cache_size}")
    labels = layouts.image_labels(data_dir, skip_bad, n_classes=n_classes)
    if split_file is not None:
        chosen = apply_split_file(
            labels, resolve_split_file(split_file), val_fraction, seed, skip_bad
        )
    else:
        chosen = select(labels, n_images, split, seed, only_defective, val_fraction)
    bad = layouts.check_images(data_dir, chosen["ImageId"], layouts.image_shapes(chosen))
    if bad:
        listed = "; ".join(f"{k} ({v})" for k, v in list(bad.items())[:10])
        msg = f"{len(bad)} selected image(s) cannot be used: {listed}"
        if not skip_bad:
            raise ValueError(msg + " (pass --skip-bad / data.skip_bad=true to drop them)")
        log.warning("%s; dropping them", msg)
        chosen = chosen[~chosen["ImageId"].isin(bad)]
    groups = None
    if group_split:
        chosen, groups = group_sides(data_dir, chosen)
    if not (chosen["split"] == "train").any():
        raise ValueError("the split has no training images; use more images or another --split")
    chosen = chosen.sort_values(["split", "ImageId"], key=_split_order).reset_index(drop=True)
    text = chosen[split_columns(chosen)].to_csv(index=False)
    digest_key, digest = layouts.labels_digest(data_dir)
    meta = {
        "version": PREPARE_VERSION,
        "data_dir": str(data_dir.resolve()),
        digest_key: digest,
        "params": prepare_params(data_dir, settings),
        "counts": chosen["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict(),
        "split_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],  # = file_digest(split.csv)
    }
    if groups is not None:
        meta["group_split"] = groups
    if layouts.MASKS_THRESHOLDED in labels.attrs:  # folder layout: anti-aliased 0/255 masks
        meta[layouts.MASKS_THRESHOLDED] = labels.attrs[layouts.MASKS_THRESHOLDED]
    n_named = layouts.data_classes(list(chosen.columns)) or 1  # the classes split.csv holds
    names = layouts.class_names(data_dir, n_named)
    meta["class_names"] = {str(c): name for c, name in names.items()}  # JSON keys are text
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


def group_sides(data_dir: Path, chosen: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Put each group of near-duplicate images of a split on one side (``data.group_split``).

    The groups are found among the chosen images (:func:`steelseg.duplicates.find_groups`);
    a group on several sides moves wholly to the side most of it is on
    (:func:`steelseg.duplicates.keep_groups_together`), so only its images move and the
    stratification of the rest stays.

    Returns:
        (``chosen`` with the new sides, what prepare.json records: ``groups`` (of 2+ images),
        ``images`` in them, ``moved``, ``threshold`` in bits).
    """
    ids = chosen["ImageId"].tolist()
    found = duplicates.find_groups(layouts.image_dir(data_dir), ids)
    group_of = {iid: g for g, members in enumerate(found["groups"]) for iid in members}
    labels = np.array([group_of.get(iid, len(group_of) + i) for i, iid in enumerate(ids)])
    sides, moved = duplicates.keep_groups_together(chosen["split"].to_numpy(), labels, SPLITS)
    chosen = chosen.assign(split=sides)
    n = len(found["groups"])
    log.info("group_split: %d near-duplicate group(s), %d image(s) moved", n, moved)
    return chosen, {
        "groups": n,
        "images": sum(len(g) for g in found["groups"]),
        "moved": moved,
        "threshold": found["threshold"],
    }


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


def prepare_params(root: str | os.PathLike, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that decide split.csv's content, as stored in prepare.json.

    Args:
        root: The data folder; its layout decides whether ``n_classes`` counts
            (:func:`steelseg.layouts.layout_n_classes`: the Kaggle layout leaves it out, so
            Kaggle splits keep their folders and prepare.json).
        settings: :data:`SPLIT_SETTINGS`' keys (a run's ``data`` section, or :func:`prepare`'s
            arguments; other keys are ignored); a missing one takes its default there.
    """
    s = {**SPLIT_SETTINGS, **{k: settings[k] for k in SPLIT_SETTINGS if k in settings}}
    split_file = s["split_file"]
    params = {
        "n_images": None if split_file else s["n_images"],
        "split": None if split_file else list(default_split(s["split"], s["only_defective"])),
        "seed": int(s["seed"]),
        "only_defective": bool(s["only_defective"]) and not split_file,
        "split_file": file_digest(resolve_split_file(split_file)) if split_file else None,
        "val_fraction": float(s["val_fraction"]),
        "skip_bad": bool(s["skip_bad"]),
    }
    n_classes = layouts.layout_n_classes(root, s["n_classes"])
    if n_classes is not None:
        params["n_classes"] = n_classes
    if s["group_split"]:  # only when on: splits made before it keep their folders
        params["group_split"] = True
    return params


def same_params(made: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether a split made with ``made`` (prepare.json's) is the one ``wanted`` asks for.

    The split may be written as counts or fractions (``800,100,100`` and ``0.8,0.1,0.1`` of
    1000 images are the same split; ``n_images`` is compared as well), so it is compared as
    shares of its sum.
    """

    def shares(params: Mapping[str, Any]) -> dict[str, Any]:
        split = params.get("split")
        if split is None or sum(split) <= 0:
            return dict(params)
        return {**params, "split": [round(x / sum(split), 9) for x in split]}

    return made is not None and shares(made) == shares(wanted)


def default_prepared_dir(root: str | os.PathLike, params: dict[str, Any]) -> Path:
    """Where a split made with ``params`` (:func:`prepare_params`) lives by default:
    ``root/prepared/split-<hash of the parameters>``."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return Path(root) / "prepared" / f"split-{key}"


def prepared_dir_for(data: Mapping[str, Any], root: str | os.PathLike | None = None) -> Path:
    """The prepared folder of a run's ``data`` config section: where training prepares its
    split, and where evaluation and tuning find it.

    Args:
        data: ``root``, ``prepared_dir`` (None: the default folder) and the split settings
            (see :func:`prepare_params`).
        root: The data folder to find the split in, when not ``data["root"]`` (another copy
            of the data); the run's ``prepared_dir`` counts only for its own ``root``.

    Returns:
        ``prepared_dir``, or ``root/prepared/split-<hash of the parameters>``
        (:func:`default_prepared_dir`).
    """
    root = Path(data["root"] if root is None else root)
    same_root = Path(data.get("root", "")).resolve() == root.resolve()
    if data.get("prepared_dir") and same_root:
        return Path(data["prepared_dir"])
    return default_prepared_dir(root, prepare_params(root, data))
