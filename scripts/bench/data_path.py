"""Section ``data``: the data path alone, one process on one core, at 256x416 with the training
augmentations: steelseg's uint8 memory-mapped cache against decoding the JPEG, and against the
reference-style path. JSON ``data_path``; target: cached >= 3x the JPEG decode."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.context import AUGMENT, DATA_SIZE, Bench, split_rows
from bench.measure import one_core, per_s
from bench.reference_loop import ReferenceStyleDataset, reference_stats

log = logging.getLogger("benchmark")


def run(bench: Bench) -> None:
    from steelseg.dataset import SteelDataset, train_transform

    a, d = bench.args, bench.data()
    rows = split_rows(d["prepared"], "train")
    n = min(a.data_samples, len(rows))
    rows = rows.iloc[:n]
    images, masks, idx = cache_arrays(d["prepared"], DATA_SIZE, "train")
    mean, std = reference_stats(a)
    datasets = {
        "cached": SteelDataset(
            rows,
            d["root"],
            DATA_SIZE,
            transform=train_transform(**AUGMENT),
            cache=(images, masks, idx[:n]),
        ),
        "jpeg": SteelDataset(rows, d["root"], DATA_SIZE, transform=train_transform(**AUGMENT)),
        "reference_style": ReferenceStyleDataset(
            rows, d["root"], DATA_SIZE, True, a.in_channels, mean, std
        ),
    }
    out: dict[str, Any] = {"size": list(DATA_SIZE), "samples": n, "threads": 1}
    with one_core():
        for name, ds in datasets.items():
            loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=0)
            best = float("inf")
            for _ in range(2):  # best of 2: the second pass reads the files from page cache
                t = time.perf_counter()
                for _batch in loader:
                    pass
                best = min(best, time.perf_counter() - t)
            out[f"{name}_images_per_s"] = per_s(n, best)
    out["cached_over_jpeg"] = round(out["cached_images_per_s"] / out["jpeg_images_per_s"], 2)
    out["cached_over_reference_style"] = round(
        out["cached_images_per_s"] / out["reference_style_images_per_s"], 2
    )
    out["what"] = (
        "one process, one thread: a DataLoader (num_workers=0, batch 8) over the train split "
        "with the training augmentations; cached = the uint8 memory-mapped cache, jpeg = "
        "cv2 decode + INTER_AREA resize + RLE decode per sample, reference_style = colour "
        "decode + per-run RLE loop + albumentations Resize/flip/Normalize to float32"
    )
    bench.results["data_path"] = out
    log.info("data %s", out)


def cache_arrays(prepared: Path, size: tuple[int, int], name: str):
    """(images, masks, positions) of one split in the memory-mapped cache, as SteelDataset takes."""
    from steelseg.cache import cache_dir

    folder = cache_dir(prepared, size)
    rows = pd.read_csv(prepared / "split.csv", dtype={"EncodedPixels": str}, keep_default_na=False)
    idx = np.flatnonzero(rows["split"].to_numpy() == name)
    images = np.load(folder / "images.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r")
    return images, masks, idx
