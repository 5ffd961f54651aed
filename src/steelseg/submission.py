"""Kaggle "Severstal: Steel Defect Detection" submissions: write one, and check it as Kaggle would.

A submission repeats the layout of the ``sample_submission.csv`` that comes with the test images:

* 2019: header ``ImageId_ClassId,EncodedPixels``, keys ``<ImageId>_<ClassId>``;
* current: header ``ImageId,EncodedPixels,ClassId`` (columns in the sample's order).

Either way it holds four rows per test image, one per class 1..4, with an empty
``EncodedPixels`` where the class is absent, since the metric is the mean Dice over every
(image, class) pair (1 where prediction and truth are both empty). Masks are encoded with
:mod:`steelseg.rle`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steelseg import rle
from steelseg.inputs import KAGGLE_TEST_IMAGES, Source
from steelseg.io import atomic_write_text, images_in

log = logging.getLogger(__name__)

LAYOUTS = ("2019", "current")
N_CLASSES = rle.N_CLASSES
#: The header of each layout as Kaggle ships it (a sample may order the columns otherwise).
HEADERS = {
    "2019": ("ImageId_ClassId", "EncodedPixels"),
    "current": ("ImageId", "EncodedPixels", "ClassId"),
}
SAMPLE_NAME = "sample_submission.csv"  # beside test_images/ in Kaggle's download
_SHOWN = 5  # ImageIds named in an error message; the rest are counted


@dataclass(frozen=True)
class Sample:
    """A ``sample_submission.csv``: the layout a submission must repeat, and its images.

    Attributes:
        path: The sample file.
        layout: One of :data:`LAYOUTS`.
        columns: Its header, in its order.
        image_ids: Every ImageId it names, once each, in file order.
    """

    path: Path
    layout: str
    columns: tuple[str, ...]
    image_ids: tuple[str, ...]


def _listed(ids: list[str]) -> str:
    more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    return ", ".join(ids[:_SHOWN]) + more


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    """Every field of a CSV as text; ``index + 2`` is a row's line number. Blank rows dropped."""
    return rle.read_csv_text(
        path,
        what,
        f"a {what} starts with the header {','.join(HEADERS['current'])!r} "
        f"(or the 2019 {','.join(HEADERS['2019'])!r})",
    )


def _layout(columns: tuple[str, ...], name: str) -> str:
    for layout, header in HEADERS.items():
        if sorted(columns) == sorted(header):
            return layout
    raise ValueError(
        f"{name} has the header {','.join(columns)!r}; expected the current layout "
        f"{','.join(HEADERS['current'])!r} or the 2019 layout {','.join(HEADERS['2019'])!r}"
    )


def _split_key(key: str, where: str) -> tuple[str, str]:
    """``<ImageId>_<ClassId>`` of the 2019 layout -> (ImageId, ClassId text)."""
    image_id, _, class_id = key.rpartition("_")
    if not image_id or class_id not in {str(c) for c in range(1, N_CLASSES + 1)}:
        raise ValueError(
            f"{where}: ImageId_ClassId {key!r} is not '<ImageId>_<ClassId>' with ClassId "
            f"1..{N_CLASSES}; fix the row"
        )
    return image_id, class_id


def read_sample(path: str | os.PathLike) -> Sample:
    """Read a ``sample_submission.csv`` and tell its layout from its header.

    Args:
        path: The sample file that comes with the test images.

    Returns:
        The sample's layout, header and ImageIds.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, has no rows or another header, or a row's ImageId is
            not a plain file name (or, in the 2019 layout, its key not ``<ImageId>_<1..4>``).
    """
    path = Path(path)
    df = _read_csv(path, "sample submission")
    name, columns = path.name, tuple(df.columns)
    layout = _layout(columns, name)
    if df.empty:
        raise ValueError(f"{name} has a header but no rows; is it the sample of the test images?")
    ids: dict[str, None] = {}
    key = "ImageId_ClassId" if layout == "2019" else "ImageId"
    for line, value in zip((df.index + 2).tolist(), df[key]):
        where = f"{name} line {line}"
        image_id = _split_key(value, where)[0] if layout == "2019" else value
        ids[rle.check_image_id(image_id, where)] = None
    return Sample(path, layout, columns, tuple(ids))


def check_images(sample: Sample, test_dir: str | os.PathLike) -> None:
    """Check that every image the sample names is in ``test_dir``.

    Raises:
        FileNotFoundError: ``test_dir`` is not a folder.
        ValueError: the sample names images that ``test_dir`` lacks.
    """
    test_dir = Path(test_dir)
    if not test_dir.is_dir():
        raise FileNotFoundError(
            f"test image folder not found: {test_dir}; pass the folder of the images "
            f"{sample.path.name} names"
        )
    present = {p.name for p in images_in(test_dir)}
    missing = [i for i in sample.image_ids if i not in present]
    if missing:
        raise ValueError(
            f"{sample.path.name} names {len(missing)} image(s) not in {test_dir.name}/: "
            f"{_listed(missing)}; is it the sample of these images?"
        )


def _check_masks(
    sample: Sample, masks: Mapping[str, np.ndarray], shape: tuple[int, int]
) -> list[np.ndarray]:
    """The sample's masks in its order, after checking each; nothing is written before."""
    missing = [i for i in sample.image_ids if i not in masks]
    if missing:
        raise ValueError(
            f"no prediction for {len(missing)} image(s) of the sample: {_listed(missing)}; "
            f"predict every image {sample.path.name} names"
        )
    out = []
    for image_id in sample.image_ids:
        m = np.asarray(masks[image_id])
        channels = 1 if m.ndim == 2 else m.shape[0] if m.ndim == 3 else None
        if channels is not None and channels != N_CLASSES:
            raise ValueError(
                f"the model predicts {channels} class(es); a Kaggle submission needs "
                f"{N_CLASSES}: train with model.classes={N_CLASSES}"
            )
        if m.shape != (N_CLASSES, *shape):
            raise ValueError(
                f"the mask of {image_id} has shape {m.shape}, expected {(N_CLASSES, *shape)} "
                "(class, height, width); predict at the images' full size"
            )
        if m.dtype.kind not in "biu":
            raise ValueError(
                f"the mask of {image_id} is {m.dtype}, expected bool or uint8; threshold "
                "the probabilities first"
            )
        out.append(m)
    return out


def write(
    path: str | os.PathLike,
    sample: Sample,
    masks: Mapping[str, np.ndarray],
    shape: tuple[int, int] = rle.SHAPE,
) -> Path:
    """Write a submission in the sample's layout, atomically.

    Four rows per image of the sample, in its order: one per class 1..4, empty
    ``EncodedPixels`` where the class is absent. Masks of images the sample does not name
    are left out.

    Args:
        path: The CSV to write (replaced whole, or left as it was on an error).
        sample: From :func:`read_sample`.
        masks: ImageId -> mask, non-zero = defect.
        shape: (height, width) of the images.

    Shape:
        Each mask: ``(4, H, W)``, channel ``c - 1`` for ClassId ``c``.

    Returns:
        ``path``.

    Raises:
        ValueError: an image of the sample has no mask, or a mask has not 4 channels, another
            shape or a float dtype; nothing is written.
    """
    path = Path(path)
    checked = _check_masks(sample, masks, shape)
    text = StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(sample.columns)
    for image_id, m in zip(sample.image_ids, checked):
        for c in range(1, N_CLASSES + 1):
            fields = {
                "ImageId_ClassId": f"{image_id}_{c}",
                "ImageId": image_id,
                "ClassId": c,
                "EncodedPixels": rle.encode(m[c - 1]),
            }
            writer.writerow([fields[k] for k in sample.columns])
    atomic_write_text(path, text.getvalue())
    return path


def check(
    path: str | os.PathLike, sample: Sample, shape: tuple[int, int] = rle.SHAPE
) -> dict[str, int | str]:
    """Re-read a written submission and validate it the way Kaggle would.

    Args:
        path: The submission CSV.
        sample: The sample it answers (:func:`read_sample`).
        shape: (height, width) of the images.

    Returns:
        ``{"images": ..., "rows": ..., "non_empty": ..., "layout": ...}``: images and rows
        in the file, rows with a defect, the sample's layout.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the first problem, with its line: a header other than the sample's, an
            image the sample does not name, an (image, class) twice or missing, a ClassId
            outside 1..4, or an RLE that does not parse inside ``shape``.
    """
    path = Path(path)
    df = _read_csv(path, "submission")
    name = path.name
    if tuple(df.columns) != sample.columns:
        raise ValueError(
            f"{name} line 1: header {','.join(df.columns)!r} differs from the sample's "
            f"{','.join(sample.columns)!r}; write it with steelseg.submission.write"
        )
    two_in_one = sample.layout == "2019"  # ImageId_ClassId holds both, split per row below
    firsts = df["ImageId_ClassId" if two_in_one else "ImageId"].tolist()
    class_ids = [""] * len(df) if two_in_one else df["ClassId"].tolist()
    wanted = set(sample.image_ids)
    valid = {str(c): c for c in range(1, N_CLASSES + 1)}
    seen: set[tuple[str, int]] = set()
    non_empty = 0
    lines = (df.index + 2).tolist()
    for line, image_id, class_text, encoded in zip(lines, firsts, class_ids, df["EncodedPixels"]):
        where = f"{name} line {line}"
        if two_in_one:
            image_id, class_text = _split_key(image_id, where)
        rle.check_image_id(image_id, where)
        if image_id not in wanted:
            raise ValueError(
                f"{where}: ImageId {image_id!r} is not in {sample.path.name}; submit only "
                "the sample's images"
            )
        c = valid.get(class_text.strip())
        if c is None:
            raise ValueError(f"{where}: ClassId {class_text!r} is not one of 1..{N_CLASSES}")
        if (image_id, c) in seen:
            raise ValueError(
                f"{where}: a second row for ImageId {image_id!r} ClassId {c}; each "
                "(image, class) must appear once"
            )
        seen.add((image_id, c))
        runs = rle.parse(encoded, shape, where=f"{where} (ImageId {image_id!r}, ClassId {c})")
        non_empty += len(runs) > 0
    absent = [
        (i, c) for i in sample.image_ids for c in range(1, N_CLASSES + 1) if (i, c) not in seen
    ]
    if absent:
        (i, c), more = absent[0], len(absent) - 1
        raise ValueError(
            f"{name} has no row for ImageId {i!r} ClassId {c}"
            + (f" (and {more} more (image, class) pairs)" if more else "")
            + f"; Kaggle needs every image of {sample.path.name} with each class 1..{N_CLASSES}"
        )
    return {
        "images": len({i for i, _ in seen}),
        "rows": len(df),
        "non_empty": non_empty,
        "layout": sample.layout,
    }


# ----------------------------------------------------------------------------- the predicted test images
def find_sample(inputs: Sequence[str | os.PathLike], sources: Sequence[Source]) -> Path | None:
    """The Kaggle ``sample_submission.csv`` that goes with the predicted images, if any: the
    one beside ``test_images/`` when an input is a folder holding ``test_images/`` (or is
    ``test_images/`` itself) and the images predicted are those test images."""
    for text in inputs:
        folder = Path(text)
        if not folder.is_dir():
            continue
        root = folder if (folder / KAGGLE_TEST_IMAGES).is_dir() else folder.parent
        csv, test_dir = root / SAMPLE_NAME, (root / KAGGLE_TEST_IMAGES).resolve()
        if csv.is_file() and any(s.path.parent.resolve() == test_dir for s in sources):
            return csv
    return None


def check_submission(sample: Sample, classes: int, sources: Sequence[Source]) -> None:
    """Check, before anything is predicted, that a model of ``classes`` classes predicting
    ``sources`` can answer ``sample``.

    Raises:
        ValueError: the model is not of the 4 Severstal classes, or the sample names images
            that are not among the sources (:func:`check_images` when
            they come from one folder).
    """
    if classes != N_CLASSES:
        raise ValueError(
            f"a Kaggle submission needs {N_CLASSES} defect classes, but the model "
            f"predicts {classes}; train with model.classes={N_CLASSES}"
        )
    have = {s.image_id for s in sources}
    extra = sorted(have - set(sample.image_ids))
    if extra:  # Kaggle's sample names every test image; a partial one leaves these out
        log.warning(
            "%s does not name %d predicted image(s) (%s%s); they get masks but no rows in "
            "submission.csv",
            sample.path.name,
            len(extra),
            ", ".join(extra[:5]),
            " ..." if len(extra) > 5 else "",
        )
    folders = {s.path.parent for s in sources}
    if len(folders) == 1:
        check_images(sample, folders.pop())
        return
    missing = [i for i in sample.image_ids if i not in have]
    if missing:
        raise ValueError(
            f"{sample.path.name} names {len(missing)} image(s) not among the inputs: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; is it the sample "
            "of these images?"
        )


class _RleMasks(Mapping):
    """ImageId -> uint8 (4, H, W) masks decoded from their RLE when asked for (an image
    without any: empty masks). The arrays are zero-allocated and only the runs are written,
    so the untouched pages of the whole test set's masks cost no memory."""

    def __init__(self, rles: Mapping[str, Sequence[str]], image_ids: Sequence[str]) -> None:
        self.rles, self.image_ids = rles, image_ids

    def __getitem__(self, image_id: str) -> np.ndarray:
        if image_id not in self.rles and image_id not in self.image_ids:
            raise KeyError(image_id)
        h, w = rle.SHAPE
        masks = np.zeros((rle.N_CLASSES, w, h), np.uint8)  # column-major, as runs count
        for c, encoded in enumerate(self.rles.get(image_id, ())):
            flat = masks[c].reshape(-1)
            for lo, hi in rle.parse(encoded).tolist():
                flat[lo:hi] = 1
        return masks.transpose(0, 2, 1)

    def __iter__(self) -> Iterator[str]:
        return iter(self.image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)


def write_checked(path: Path, sample: Sample, rles: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Write ``submission.csv`` in the sample's layout from each image's per-class RLE, and
    check it as Kaggle would.

    Args:
        path: The file to write.
        sample: The ``sample_submission.csv`` it answers.
        rles: ImageId -> the RLE of each class 1..4; an image of the sample without an entry
            (skipped, and named already) gets empty rows.

    Returns:
        :func:`check`'s summary, with the file, the sample and the images ``left_empty``.
    """
    left_empty = [i for i in sample.image_ids if i not in rles]
    write(path, sample, _RleMasks(rles, sample.image_ids))
    checked = check(path, sample)
    return {"file": path.name, "sample": str(sample.path), **checked, "left_empty": left_empty}
