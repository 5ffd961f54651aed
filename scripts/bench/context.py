"""What every section shares: the run (:class:`Bench`: options, device, work folder, peaks and
the results that become the JSON), the synthetic Kaggle-layout set on disk with its split and
caches, and the benchmark's network."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch

from bench.measure import Peaks

DATA_SIZE = (256, 416)  # the reference's training size: the data path is always measured there
FULL_SIZE = (256, 1600)  # Severstal images
AUGMENT = {"p_flip": 0.5, "brightness": 0.2, "contrast": 0.2, "shift": 0.05}  # conf/data

log = logging.getLogger("benchmark")


class Bench:
    """One benchmark run; every section's result lands in :attr:`results` (the JSON)."""

    def __init__(self, args: argparse.Namespace, device: torch.device, work: Path) -> None:
        self.args, self.device, self.work = args, device, work
        self.cuda = device.type == "cuda"
        self.peaks = Peaks(device)
        self.results: dict[str, Any] = {}
        self._data: dict[str, Any] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (self.args.height, self.args.width)

    def data(self) -> dict[str, Any]:
        """The shared synthetic set, split and caches (model size and data-path size)."""
        if self._data is None:
            root = synthetic_set(self.work / "synthetic", self.args.images)
            prepared = self.work / "prepared"
            prep = prepared_split(root, prepared, self.size)
            if self.size != DATA_SIZE:
                from steelseg.cache import build_cache

                build_cache(root, prepared, DATA_SIZE)
            self._data = {"root": root, "prepared": prepared, "prepare_s": prep["seconds"]}
            self.results["data_set"] = {
                "images": self.args.images,
                "split": {s: len(split_rows(prepared, s)) for s in ("train", "val", "test")},
                "prepare_and_cache_s": prep["seconds"],
            }
        return self._data

    def workers(self) -> int:
        w = self.args.workers
        return min(4, os.cpu_count() or 1) if w is None else w  # steelseg's default (conf/data)

    def batches(self) -> list[int]:
        return sorted({self.args.batch, self.args.reference_batch})

    def variants(self) -> list[dict[str, Any]]:
        """The model-only variants: fp32, on a bf16 GPU bf16 + channels_last, and +compile."""
        out = [{"name": "fp32", "bf16": False, "channels_last": False, "compile": None}]
        if self.cuda and torch.cuda.is_bf16_supported():
            out.append({"name": "bf16+cl", "bf16": True, "channels_last": True, "compile": None})
        if self.args.compile:
            out.append(dict(out[-1], name=out[-1]["name"] + "+compile", compile=self.args.compile))
        return out

    def fastest_eager(self) -> str:
        """The model-only variant steelseg's loop runs by default: its ceiling in (b)/(a)."""
        return [v["name"] for v in self.variants() if not v["compile"]][-1]


# ----------------------------------------------------------------------------- the network
def make_module(args: argparse.Namespace, **kwargs: Any):
    from steelseg.model import SteelSegModule

    return SteelSegModule(
        args.arch, args.encoder, None, args.in_channels, dict(args.arch_kwargs), **kwargs
    )


def save_untrained(module, path: Path) -> Path:
    """An untrained module as a steelseg checkpoint (what the inference code loads)."""
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


# ----------------------------------------------------------------------------- data on disk
def synthetic_set(folder: Path, n_images: int) -> Path:
    """A synthetic Kaggle-layout set of ``n_images`` at ``folder`` (reused when it matches)."""
    from steelseg import synth

    marker = folder / synth.MARKER
    made = (folder / "train.csv").exists() and marker.exists()
    if made and json.loads(marker.read_text()).get("n_images") == n_images:
        return folder
    t = time.perf_counter()
    synth.generate(folder, n_images=n_images, seed=0, n_test=0, progress=False)
    log.info("generated %d synthetic images in %.1f s", n_images, time.perf_counter() - t)
    return folder


def prepared_split(root: Path, prepared: Path, size: tuple[int, int]) -> dict[str, Any]:
    """split.csv (80/10/10) and a uint8 cache at ``size`` through SteelDataModule.prepare_data."""
    from steelseg.dataset import SteelDataModule

    dm = SteelDataModule(
        str(root), str(prepared), n_images=None, split=(0.8, 0.1, 0.1), height=size[0],
        width=size[1], cache=True, num_workers=0,
    )  # fmt: skip
    t = time.perf_counter()
    dm.prepare_data()
    return {"seconds": round(time.perf_counter() - t, 2), "datamodule": dm}


def split_rows(prepared: Path, name: str) -> pd.DataFrame:
    rows = pd.read_csv(prepared / "split.csv", dtype={"EncodedPixels": str}, keep_default_na=False)
    return rows[rows["split"] == name].reset_index(drop=True)
