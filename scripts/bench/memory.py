"""Section ``memory``: host memory of one training epoch over a larger synthetic set
(``--memory-images``) against the size of its uint8 cache. The cache is memory-mapped, so the
bound is the cache's pages plus a constant, never a copy on the heap. JSON ``memory``."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from bench.context import AUGMENT, DATA_SIZE, Bench, make_module, split_rows, synthetic_set
from bench.measure import rss_mb

log = logging.getLogger("benchmark")


def run(bench: Bench) -> None:
    from steelseg.cache import cache_dir
    from steelseg.config import auto_precision
    from steelseg.dataset import SteelDataModule

    a = bench.args
    root = synthetic_set(bench.work / "memory-synthetic", a.memory_images)
    prepared = bench.work / "memory-prepared"
    crop = None if bench.size == DATA_SIZE else list(bench.size)
    dm = SteelDataModule(
        str(root), str(prepared), n_images=None, split=(0.8, 0.1, 0.1),
        height=DATA_SIZE[0], width=DATA_SIZE[1], cache=True,
        augment=AUGMENT | {"crop": crop}, batch_size=a.batch, num_workers=0,
    )  # fmt: skip
    dm.prepare_data()
    folder = cache_dir(prepared, DATA_SIZE)
    cache_mb = sum((folder / f).stat().st_size for f in ("images.npy", "masks.npy")) / 2**20
    n_train = len(split_rows(prepared, "train"))
    train_cache_mb = cache_mb * n_train / a.memory_images
    module = make_module(a)
    trainer = pl.Trainer(
        accelerator="gpu" if bench.cuda else "cpu", devices=1, max_epochs=1,
        limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        precision=auto_precision("gpu" if bench.cuda else "cpu"),
    )  # fmt: skip
    if bench.cuda:
        torch.zeros(1, device=bench.device)  # the CUDA context is not the data's memory
    before = rss_mb()
    out: dict[str, Any] = {}
    with bench.peaks.section(out):
        trainer.fit(module, datamodule=dm)
    after = rss_mb()
    peak = out.pop("peak_rss_mb")
    growth = peak - before["rss"]
    out |= {
        "images": a.memory_images,
        "train_images": n_train,
        "cache_mb": round(cache_mb, 1),
        "train_cache_mb": round(train_cache_mb, 1),
        "cache_loading": "np.load(mmap_mode='r'): file-backed pages, shared by workers",
        "rss_before_mb": round(before["rss"], 1),
        "rss_peak_mb": round(peak, 1),
        "rss_growth_mb": round(growth, 1),
        "overhead_mb": round(growth - train_cache_mb, 1),
        "anon_growth_mb": round((after["anon"] or 0) - (before["anon"] or 0), 1),
        "file_growth_mb": round((after["file"] or 0) - (before["file"] or 0), 1),
        "peak_window_reset": bench.peaks.resettable,
        "what": f"one training epoch (Lightning, num_workers=0, crop {crop or 'none'}) over "
        f"{n_train} images cached at {DATA_SIZE[0]}x{DATA_SIZE[1]}",
    }
    bench.results["memory"] = out
    log.info("memory %s", out)
