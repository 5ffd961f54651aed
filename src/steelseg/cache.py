"""The uint8 cache of a prepared split: every image and mask of ``split.csv`` decoded once.

``<prepared>/cache_<H>x<W>/`` holds ``images.npy`` and ``masks.npy``, both (N, H, W) uint8 in
split.csv order (masks: class id per pixel), readable as memory maps, and ``split.sha256``: the
split.csv it was made from. ``steelseg-prepare --cache HxW`` and training (``data.cache``)
build it; the dataset reads it (see :mod:`steelseg.dataset`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from steelseg import rle
from steelseg.io import atomic_dir, check_space, file_digest, locked, read_grey, remove_stale
from steelseg.layouts import image_dir, read_split, row_masks, row_shape


def cache_dir(out: Path, size: tuple[int, int]) -> Path:
    """Folder of the uint8 cache of a prepared split at ``size`` (height, width)."""
    return Path(out) / f"cache_{size[0]}x{size[1]}"


def cache_matches(folder: Path, split_digest: str) -> bool:
    """Whether ``folder`` holds a complete cache of the split.csv with this digest."""
    stamp = folder / "split.sha256"
    return stamp.exists() and stamp.read_text() == split_digest and (folder / "masks.npy").exists()


def load_sample(
    data_dir: Path,
    image_id: str,
    encoded: Sequence[str],
    size: tuple[int, int] | None,
    shape: tuple[int, int] = rle.SHAPE,
):
    """Decode one image and its class mask, resized to ``size`` (height, width) when given.

    Args:
        encoded: The image's RLE per class (see :func:`steelseg.layouts.row_masks`).
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

    Both are (N, H, W) uint8 in split.csv order (masks: class id per pixel), readable as
    memory maps. Written under a temporary folder name and renamed, so an interrupted build
    leaves no cache behind; a cache of the same split.csv is reused.
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
