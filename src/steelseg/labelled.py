"""A run's labelled images: the images of a split (or of a whole folder) with their masks.

:func:`labelled_split` finds one split of the data a model was trained on, from its run's
``config.yaml`` (:func:`steelseg.prepare.prepared_dir_for`); :func:`labelled_images` reads a
data folder with a prepared ``split.csv``, or every labelled image of it; :class:`MaskReader`
gives each image's ground truth on demand. Evaluation, tuning, export's checks and the runtime
choice all take their labelled images from here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steelseg import rle
from steelseg.inputs import Source
from steelseg.io import run_folder
from steelseg.layouts import (
    FOLDER_MASKS,
    KAGGLE_CSV,
    KAGGLE_IMAGES,
    class_names,
    data_classes,
    image_dir,
    image_labels,
    is_folder_layout,
    row_masks,
    row_shape,
)
from steelseg.prepare import SPLIT_CHOICES, complete_split, prepared_dir_for
from steelseg.runtime import FILE_FORMATS, load_metadata

log = logging.getLogger(__name__)


#: labelled images as :func:`labelled_split` and :func:`labelled_images` give them:
#: ``(image_ids, image_paths, mask_of)``, what :func:`steelseg.evaluate.evaluate` and
#: :func:`steelseg.tune.tune` score a predictor on
LabelledImages = tuple[list[str], list[Path], "MaskReader"]


def _run_data_config(run: Path) -> dict[str, Any] | None:
    """The ``data`` section of the run's ``config.yaml`` (written by steelseg-train), or None.

    Its relative paths (``root``, ``prepared_dir``) were relative to the folder the run was
    started in: where they do not exist from the current folder, they are taken from that one
    (Hydra's ``.hydra/hydra.yaml`` records it), so a run's checkpoints work from anywhere.
    """
    from omegaconf import OmegaConf

    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        return None
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"{cfg_path} has no 'data' section; pass --data-root and --split-file")
    for key in ("root", "prepared_dir"):
        path = data.get(key)
        relative = isinstance(path, str) and "${" not in path and not Path(path).is_absolute()
        if relative and not Path(path).exists():
            started_in = _started_in(run)
            if started_in is not None and (started_in / path).exists():
                data[key] = str(started_in / path)
    return data


def _started_in(run: Path) -> Path | None:
    """The folder a ``steelseg-train`` run was started in (Hydra's ``runtime.cwd``), or None."""
    from omegaconf import OmegaConf

    try:
        cwd = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.cwd
    except Exception:  # no Hydra record (a run from Python), or an unreadable one
        return None
    return Path(cwd) if isinstance(cwd, str) else None


def model_checkpoint(model: str | os.PathLike) -> Path:
    """The checkpoint behind a model file, whose run holds the labelled splits: the file
    itself, or the checkpoint an export was made from (named in its metadata)."""
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix.lower() in FILE_FORMATS:
        source = load_metadata(path).get("checkpoint")
        return Path(source) if source else path
    return path


def model_class_names(model: str | os.PathLike | None, n_classes: int) -> dict[int, str]:
    """{class id: name} of a model's classes: those of the data its run was trained on
    (``data.root`` of the run's ``config.yaml``: :func:`steelseg.layouts.class_names`), else
    the ids (``defect`` for a binary model)."""
    root = None
    if model is not None:
        try:
            data = _run_data_config(run_folder(model_checkpoint(model)))
        except (OSError, ValueError, ImportError):  # no run (or no omegaconf, deployed): ids
            data = None
        root = data.get("root") if data else None
    return class_names(root, n_classes)


def labelled_split(
    checkpoint_or_run: str | os.PathLike,
    split: str = "val",
    data_root: str | os.PathLike | None = None,
    split_file: str | os.PathLike | None = None,
) -> tuple[list[str], list[Path], MaskReader]:
    """Images and full-resolution masks of one split of the data a model was trained on.

    The data folder and the prepared ``split.csv`` come from the run's ``config.yaml`` (the
    checkpoint lives in ``<run>/checkpoints/``) unless given. ``split="all"`` with no split
    file to read (none given and none prepared for ``data_root``) takes every labelled image
    of the data folder: evaluating a Kaggle-layout folder needs no preparation step.

    Args:
        checkpoint_or_run: A checkpoint inside a run folder, or the run folder.
        split: ``train``, ``val``, ``test`` or ``all``.
        data_root: Kaggle-layout folder holding ``train_images/`` (default: the run's
            ``data.root``).
        split_file: A prepared ``split.csv`` (``ImageId, split, EncodedPixels``; see
            ``steelseg-prepare``) to use instead of the run's.

    Returns:
        See :func:`labelled_images`.

    Raises:
        FileNotFoundError: the run, data folder or split file is missing.
        ValueError: unknown split, malformed split file, or an empty split.
    """
    if split not in SPLIT_CHOICES:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLIT_CHOICES)}")
    run = run_folder(checkpoint_or_run)
    data = _run_data_config(run)
    if data_root is None and data is None:
        raise FileNotFoundError(
            f"{run} has no config.yaml (is the checkpoint inside a steelseg-train run folder?); "
            "pass --data-root (and --split-file, or --split all)"
        )
    root = Path(data_root if data_root is not None else data["root"])
    csv = Path(split_file) if split_file is not None else None
    if csv is None and data is not None:
        prepared = prepared_dir_for(data, root) / "split.csv"
        if prepared.is_file() or split != "all":  # else: every labelled image of the folder
            csv = prepared
        if prepared.is_file() and complete_split(prepared.parent) is None:
            raise ValueError(
                f"the prepared split {prepared} is incomplete (no matching prepare.json: a run "
                "was stopped while writing it); run steelseg-train or steelseg-prepare again, "
                "or pass --split-file"
            )
    if csv is None and split != "all" and (root / KAGGLE_IMAGES).is_dir():
        raise FileNotFoundError(
            f"{run} has no config.yaml to find the prepared split in; pass --split-file, or "
            "--split all for every labelled image of the folder"
        )
    return labelled_images(root, csv, split)


def labelled_sources(
    checkpoint: str | os.PathLike,
    split: str,
    data_root: str | os.PathLike | None,
    split_file: str | os.PathLike | None,
) -> tuple[list[Source], MaskReader] | None:
    """:func:`labelled_split` as sources and a mask reader, or None (logged) when the
    checkpoint has no run to find them in and no ``data_root`` or ``split_file`` was given."""
    try:
        ids, paths, mask_of = labelled_split(checkpoint, split, data_root, split_file)
    except FileNotFoundError as e:
        if data_root is not None or split_file is not None:
            raise
        log.debug("no labelled %s split (%s)", split, e)
        return None
    return [Source(p, i) for i, p in zip(ids, paths)], mask_of


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
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (from the current folder, {Path.cwd()})"
        raise FileNotFoundError(
            f"data folder {root} does not exist{where}; pass --data-root with the Kaggle-layout "
            "or images/ + masks/ folder the model was trained on"
        )
    if not image_dir(root).is_dir():
        raise FileNotFoundError(
            f"data folder {root} has no train_images/ (nor images/); pass --data-root with the "
            "Kaggle-layout or images/ + masks/ folder the model was trained on"
        )
    if split_csv is None:
        if split != "all":
            raise ValueError(f"split {split!r} needs a prepared split.csv; pass --split-file")
        rows = image_labels(root, any_class=True, n_classes=None)  # classes: as the masks hold
        where = root / (FOLDER_MASKS if is_folder_layout(root) else KAGGLE_CSV)
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
