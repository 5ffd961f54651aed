"""Kaggle run-length encoding of Severstal masks, and the annotation CSV reader.

Convention (Kaggle "Severstal: Steel Defect Detection"): a mask is written as pairs
``start length``; pixels are numbered from 1, top to bottom, then left to right (column-major).
An empty string, ``None`` or NaN is an empty mask.

This module needs numpy and pandas only (no torch), so it can be used in data tools.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

SHAPE: tuple[int, int] = (256, 1600)  # (height, width) of every Severstal image
N_CLASSES = 4
#: ClassId of a binary mask whose defect class is unknown (steelseg predictions and
#: pseudo-labels); :func:`read_annotations` accepts it only with ``any_class=True``.
ANY_CLASS = 0


def _is_empty(rle: object) -> bool:
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and not rle.strip()


#: numpy 1 stops at an unreadable token with a warning where numpy 2 raises
_NUMPY_1 = np.lib.NumpyVersion(np.__version__) < "2.0.0"


def _integers(text: str) -> np.ndarray | None:
    """Whitespace-separated integers as int64, or None if any token is not an integer."""
    # np.fromstring's text mode parses ~3x faster than str.split + int(). At a token it cannot
    # read it raises (numpy 2) or stops with a warning (numpy 1): there the token count tells.
    # Never warnings.catch_warnings here: it swaps the process-wide filters, and the cache's
    # decoding threads racing through it left "error::DeprecationWarning" behind for good (which
    # broke torch.compile's import on a GPU machine).
    try:
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    except ValueError:
        return None
    if _NUMPY_1 and len(values) != len(text.split()):
        return None
    return values


def _boundaries(rle: str, shape: tuple[int, int], where: str) -> np.ndarray:
    """Validated run boundaries ``[0, s0, e0, s1, e1, ..., h*w]`` (0-indexed, ends exclusive)."""
    ctx = f"{where}: " if where else ""
    if not isinstance(rle, str):
        raise ValueError(f"{ctx}EncodedPixels must be a string, got {type(rle).__name__} {rle!r}")
    v = _integers(rle)
    if v is None:
        bad = next((t for t in rle.split() if not t.isdigit()), rle.strip()[:20])
        raise ValueError(f"{ctx}RLE token {bad!r} is not a positive integer")
    if len(v) % 2:
        raise ValueError(
            f"{ctx}RLE has an odd number of tokens ({len(v)}); it must be pairs of 'start length'"
        )
    n = shape[0] * shape[1]
    if len(v) and (v.min() < 1 or v.max() > n):  # also keeps the sums below from overflowing
        _explain(v[0::2], v[1::2], n, shape, ctx)
    b = np.empty(len(v) + 2, dtype=np.int64)
    b[0], b[-1] = 0, n
    b[1:-1:2] = v[0::2] - 1
    b[2:-1:2] = b[1:-1:2] + v[1::2]
    steps = np.diff(b)  # gap, run, gap, run, ..., gap
    # One check covers every rule: gaps >= 0 (start >= 1, no overlap, inside the image), runs >= 1.
    if steps[0::2].min() < 0 or steps[1::2].min() < 1:
        _explain(v[0::2], v[1::2], n, shape, ctx)
    return b


def _explain(
    starts: np.ndarray, lengths: np.ndarray, n: int, shape: tuple[int, int], ctx: str
) -> None:
    """Raise the ValueError that says which rule a run list breaks."""
    if max(starts.max(), lengths.max()) == np.iinfo(np.int64).max:  # np.fromstring saturates
        raise ValueError(f"{ctx}RLE holds a number too large for any image")
    if starts.min() < 1:
        raise ValueError(f"{ctx}RLE start {int(starts.min())} < 1 (Kaggle runs are 1-indexed)")
    if lengths.min() < 1:
        raise ValueError(f"{ctx}RLE run length {int(lengths.min())} < 1")
    ends = starts + lengths  # 1-indexed, exclusive
    bad = np.flatnonzero(starts[1:] < ends[:-1])
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{ctx}RLE runs are not increasing or overlap: run {i + 1} "
            f"(start {starts[i]}, length {lengths[i]}) is followed by start "
            f"{starts[i + 1]}"
        )
    i = int(np.argmax(ends))
    raise ValueError(
        f"{ctx}RLE run (start {starts[i]}, length {lengths[i]}) ends at pixel "
        f"{int(ends[i] - 1)}, past the end of a {shape[0]}x{shape[1]} image "
        f"({n} pixels)"
    )


def parse(rle: str | None, shape: tuple[int, int] = SHAPE, where: str = "") -> np.ndarray:
    """Parse and validate an RLE string into 0-indexed ``[start, end)`` runs.

    Args:
        rle: Kaggle RLE string (``"start length start length ..."``); empty/None/NaN is empty.
        shape: (height, width) of the image the runs index.
        where: Context for error messages, e.g. ``"train.csv line 7 (ImageId 0002cc93b.jpg)"``.

    Returns:
        int64 array of shape (n_runs, 2): 0-indexed column-major start and exclusive end.

    Raises:
        ValueError: odd number of tokens, non-integer tokens, start < 1, length < 1,
            runs not increasing or overlapping, or a run past the end of the image.
    """
    if _is_empty(rle):
        return np.empty((0, 2), dtype=np.int64)
    return _boundaries(rle, shape, where)[1:-1].reshape(-1, 2)


def decode(
    rle: str | None,
    shape: tuple[int, int] = SHAPE,
    out: np.ndarray | None = None,
    where: str = "",
) -> np.ndarray:
    """Decode a Kaggle RLE string into a binary mask.

    Args:
        rle: Kaggle RLE string; empty string, None or NaN gives an empty mask.
        shape: (height, width) of the mask.
        out: Optional preallocated uint8 buffer of shape ``(width, height)`` (C-contiguous,
            i.e. the transposed mask) for bulk work; it is overwritten and its transpose is
            returned.
        where: Context for error messages.

    Returns:
        uint8 mask of ``shape`` with values 0/1 (a transposed view of a column-major buffer).

    Raises:
        ValueError: the string is malformed (see :func:`parse`).
    """
    h, w = shape
    if out is not None and (
        out.shape != (w, h) or out.dtype != np.uint8 or not out.flags.c_contiguous
    ):
        raise ValueError(
            f"out must be a C-contiguous uint8 array of shape {(w, h)} "
            f"(the transposed mask), got {out.dtype} {out.shape}"
        )
    if out is None:
        buf = np.zeros((w, h), dtype=np.uint8)  # calloc: pages outside the runs stay untouched
    else:
        buf = out
        buf.fill(0)
    if not _is_empty(rle):
        _fill(_boundaries(rle, shape, where)[1:-1], buf.reshape(-1))
    return buf.T


_PAGE = 4096  # bytes: gaps this long are skipped, so untouched zero pages are never written


def _fill(b: np.ndarray, flat: np.ndarray) -> None:
    """Write the runs ``[b0, b1), [b2, b3), ...`` as 1s into a zeroed flat buffer.

    Each cluster of runs (separated by gaps shorter than a page) is written in one call:
    1/0 repeated over run/gap lengths. That beats a Python loop over runs by several times and
    leaves the pages between distant defects untouched (cheap for freshly allocated masks).
    """
    steps = np.diff(b)  # run, gap, run, ..., run
    values = np.zeros(len(steps), dtype=np.uint8)
    values[0::2] = 1
    cuts = np.flatnonzero(steps[1::2] >= _PAGE) * 2 + 1  # indices (into steps) of long gaps
    lo = 0
    for hi in [*cuts.tolist(), len(steps)]:
        flat[b[lo] : b[hi]] = np.repeat(values[lo:hi], steps[lo:hi])
        lo = hi + 1


def encode(mask: np.ndarray) -> str:
    """Encode a binary mask as a canonical Kaggle RLE string.

    Runs are sorted and merged, so ``encode(decode(s)) == s`` for every canonical ``s``.

    Args:
        mask: 2-D array, non-zero means defect.

    Returns:
        ``"start length ..."`` (1-indexed, column-major), or ``""`` for an empty mask.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)  # column-major pixel order
    if not flat.any():
        return ""
    # Positions where the value changes; the padding makes runs at the edges close.
    padded = np.zeros(flat.size + 2, dtype=np.int8)
    padded[1:-1] = flat
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    edges[1::2] -= edges[0::2]
    edges[0::2] += 1
    return " ".join(edges.astype(str).tolist())


def runs_to_rle(runs: np.ndarray) -> str:
    """Format 0-indexed ``[start, end)`` runs (sorted, non-overlapping) as Kaggle RLE."""
    if len(runs) == 0:
        return ""
    out = np.empty(2 * len(runs), dtype=np.int64)
    out[0::2] = runs[:, 0] + 1
    out[1::2] = runs[:, 1] - runs[:, 0]
    return " ".join(out.astype(str).tolist())


def merge(rles: Iterable[str | None], shape: tuple[int, int] = SHAPE) -> str:
    """Union of several RLE masks (e.g. the 4 classes of one image) as one canonical RLE.

    Works on the runs directly, without building a mask.
    """
    parts = [parse(r, shape) for r in rles]
    runs = np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.int64)
    if len(runs) == 0:
        return ""
    runs = runs[np.argsort(runs[:, 0], kind="stable")]
    # A run starts a new group when it begins after every earlier run has ended.
    ends = np.maximum.accumulate(runs[:, 1])
    new = np.ones(len(runs), dtype=bool)
    new[1:] = runs[1:, 0] > ends[:-1]
    group = np.cumsum(new) - 1
    merged = np.empty((int(group[-1]) + 1, 2), dtype=np.int64)
    merged[:, 0] = runs[new, 0]
    merged[:, 1] = np.maximum.reduceat(runs[:, 1], np.flatnonzero(new))
    return runs_to_rle(merged)


def area(rle: str | None, shape: tuple[int, int] = SHAPE) -> int:
    """Number of masked pixels in an RLE string."""
    runs = parse(rle, shape)
    return int((runs[:, 1] - runs[:, 0]).sum())


def check_image_id(image_id: object, where: str = "") -> str:
    """Return ``image_id`` if it is a plain file name, else raise ``ValueError``.

    A CSV must not make steelseg read or write outside the data folder.
    """
    ctx = f"{where}: " if where else ""
    if not isinstance(image_id, str) or not image_id.strip():
        raise ValueError(f"{ctx}ImageId {image_id!r} is empty or not a string")
    if "/" in image_id or "\\" in image_id or "\x00" in image_id or image_id in (".", ".."):
        raise ValueError(
            f"{ctx}ImageId {image_id!r} is not a plain file name (no folders, no '..'); fix the CSV"
        )
    return image_id


def _header(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().strip()


def read_csv_text(path: str | os.PathLike, what: str, empty_hint: str) -> pd.DataFrame:
    """Every field of a Kaggle CSV as text (never NaN), blank rows dropped; ``index + 2`` is
    a row's line number in the file.

    Args:
        path: The CSV.
        what: What the file is, for messages (``"annotation CSV"``).
        empty_hint: What an empty file should have held, for its message.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty, not UTF-8, malformed, or a row with more fields than the header;
            one line naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    name = os.path.basename(path)
    # Blank lines are kept (then dropped below) so that index + 2 is the file's line number.
    try:
        with warnings.catch_warnings():  # index_col=False: extra fields warn, never shift columns
            warnings.simplefilter("error", pd.errors.ParserWarning)
            raw = pd.read_csv(
                path, dtype=str, keep_default_na=False, skip_blank_lines=False, index_col=False
            )
    except pd.errors.ParserWarning:
        raise ValueError(
            f"{name} has rows with more fields than its header {_header(path)!r}; "
            "quote fields that hold commas"
        ) from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{name} is empty; {empty_hint}") from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{name} is not a text CSV (byte {e.start} is not UTF-8); is it the right file?"
        ) from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{name} is not a well-formed CSV: {str(e).strip()}") from None
    raw = raw.fillna("")  # a row with fewer fields than the header
    return raw[(raw != "").any(axis=1)] if len(raw.columns) else raw


def read_annotations(
    csv_path: str | os.PathLike, shape: tuple[int, int] = SHAPE, any_class: bool = False
) -> pd.DataFrame:
    """Read a Severstal ``train.csv`` (either layout) into long form, defect rows only.

    Accepted layouts:

    * 2019: ``ImageId_ClassId,EncodedPixels``, four rows per image, empty = class absent.
    * current: ``ImageId,ClassId,EncodedPixels``, defect rows only.

    Every row is validated (ImageId a plain file name, ClassId in 1..4, RLE well-formed and
    inside ``shape``, no duplicate (ImageId, ClassId)).

    Args:
        csv_path: Path to the CSV.
        shape: (height, width) of the images.
        any_class: Also accept ClassId :data:`ANY_CLASS` (0), the binary "defect of any class"
            that ``steelseg-predict`` and ``steelseg-pseudo`` write. Off for Kaggle files.

    Returns:
        DataFrame with columns ``ImageId`` (str), ``ClassId`` (int), ``EncodedPixels`` (str),
        one row per (image, class) with a non-empty mask, in file order. ``df.attrs["image_ids"]``
        lists every ImageId the CSV names, defect-free ones of the 2019 layout included.

    Raises:
        FileNotFoundError: the CSV does not exist.
        ValueError: a missing column or a bad row; the message names the line and ImageId.
    """
    name = os.path.basename(os.fspath(csv_path))
    raw = read_csv_text(
        csv_path,
        "annotation CSV",
        "it needs the header 'ImageId,ClassId,EncodedPixels' (or the 2019 "
        "'ImageId_ClassId,EncodedPixels') and one row per defect",
    )
    cols = set(raw.columns)
    if {"ImageId_ClassId", "EncodedPixels"} <= cols:
        key = raw["ImageId_ClassId"]
        image_id = key.str.rpartition("_")[0] if len(raw) else key
        class_id = key.str.rpartition("_")[2] if len(raw) else key
        bad = image_id == ""
        if bad.any():
            i = bad.idxmax()
            raise ValueError(
                f"{name} line {i + 2}: ImageId_ClassId {key[i]!r} is not '<ImageId>_<ClassId>'"
            )
        df = pd.DataFrame(
            {"ImageId": image_id, "ClassId": class_id, "EncodedPixels": raw["EncodedPixels"]}
        )
    elif {"ImageId", "ClassId", "EncodedPixels"} <= cols:
        df = raw[["ImageId", "ClassId", "EncodedPixels"]].copy()
    else:
        raise ValueError(
            f"{name} has columns {list(raw.columns)}; expected the 2019 layout "
            "'ImageId_ClassId,EncodedPixels' or the current layout 'ImageId,ClassId,EncodedPixels'"
        )

    lines = (df.index + 2).tolist()
    cls = pd.to_numeric(df["ClassId"].str.strip(), errors="coerce")
    for line, iid, c, c_raw in zip(lines, df["ImageId"], cls, df["ClassId"]):
        where = f"{name} line {line} (ImageId {iid!r})"
        check_image_id(iid, where)
        lowest = ANY_CLASS if any_class else 1
        if not (c == c and float(c).is_integer() and lowest <= c <= N_CLASSES):
            raise ValueError(f"{where}: ClassId {c_raw!r} is not one of {lowest}..{N_CLASSES}")
    df["ClassId"] = cls.astype(np.int64)
    dup = df.duplicated(["ImageId", "ClassId"]).to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ValueError(
            f"{name} line {lines[i]}: duplicate row for ImageId "
            f"{df['ImageId'].iloc[i]!r} ClassId {df['ClassId'].iloc[i]}; each "
            "(image, class) may appear once"
        )
    image_ids = list(dict.fromkeys(df["ImageId"]))
    df["EncodedPixels"] = df["EncodedPixels"].str.strip()
    for line, iid, c, s in zip(lines, df["ImageId"], df["ClassId"], df["EncodedPixels"]):
        if s:
            parse(s, shape, where=f"{name} line {line} (ImageId {iid!r}, ClassId {c})")
    df = df[df["EncodedPixels"] != ""].reset_index(drop=True)
    df.attrs["image_ids"] = image_ids
    return df


def class_mask(
    encoded: Sequence[str | None], shape: tuple[int, int] = SHAPE, where: str = ""
) -> np.ndarray:
    """One mask holding every class: pixel value = class id (1..len(encoded)), 0 = background.

    Severstal's classes never overlap; where two runs would, the higher class id wins.

    Args:
        encoded: The RLE of class 1, 2, ... (empty for an absent class).
        shape: (height, width) of the image.
        where: Context for error messages.

    Returns:
        uint8 (H, W) class-id mask.
    """
    out = np.zeros(shape, np.uint8)
    for c, s in enumerate(encoded, start=1):
        if not _is_empty(s):
            out[decode(s, shape, where=where).astype(bool)] = c
    return out


def image_mask(
    annotations: pd.DataFrame, image_id: str, shape: tuple[int, int] = SHAPE
) -> np.ndarray:
    """Merged binary mask (all defect classes) of one image from :func:`read_annotations`.

    Returns:
        uint8 mask of ``shape``, 1 where any class has a defect; all zeros for an image
        without rows.
    """
    rows = annotations.loc[annotations["ImageId"] == image_id, "EncodedPixels"]
    return decode(merge(rows, shape), shape)
