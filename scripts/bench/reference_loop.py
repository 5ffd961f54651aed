"""Section ``reference``, (c): a reference-style training loop, as the original task ran it. fp32,
per-sample cv2 JPEG decode + per-run RLE decode + albumentations Resize/flip/Normalize in a
DataLoader (:class:`ReferenceStyleDataset`, also raced by the ``data`` section), and a plain
PyTorch loop with a per-step ``loss.item()``. JSON ``reference_loop``: the baseline (b) aims to
beat by >= 1.6x (GPU, batch 32)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from bench.context import Bench, split_rows
from bench.measure import epoch_summary, now
from bench_rle import loop_decode

log = logging.getLogger("benchmark")


def run(bench: Bench) -> None:
    rows = []
    for batch in bench.batches():
        rows.append(reference_loop(bench, batch))
        log.info("reference %s", rows[-1])
    bench.results["reference_loop"] = rows


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """The reference's data path: decode the JPEG and the RLE (per-run loop) for every sample, then
    albumentations Resize, flip and Normalize on the CPU; float32 tensors out.

    Args:
        rows: split.csv rows (ImageId, EncodedPixels).
        root: Kaggle-layout folder.
        size: (height, width) to resize to.
        train: Random horizontal flips.
        in_channels: 3: decode as colour (the reference read its grey JPEGs as 3 channels); 1: grey.
        mean: Per-channel mean (0..1 scale) for Normalize.
        std: Per-channel std (0..1 scale).
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        root: Path,
        size: tuple[int, int],
        train: bool,
        in_channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        import albumentations as A

        self.ids, self.rles = rows["ImageId"].tolist(), rows["EncodedPixels"].tolist()
        self.root, self.in_channels = Path(root), in_channels
        flips = [A.HorizontalFlip(p=0.5)] if train else []
        self.transform = A.Compose(
            [A.Resize(*size), *flips, A.Normalize(mean=mean, std=std, max_pixel_value=255.0)]
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        flag = cv2.IMREAD_COLOR if self.in_channels == 3 else cv2.IMREAD_GRAYSCALE
        image = cv2.imread(str(self.root / "train_images" / self.ids[i]), flag)
        mask = np.ascontiguousarray(loop_decode(self.rles[i]))
        out = self.transform(image=image, mask=mask)
        image = out["image"] if image.ndim == 3 else out["image"][..., None]
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (C, H, W) float32
        return x, torch.from_numpy(out["mask"])[None].float()


def reference_stats(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from steelseg.model import normalisation

    mean, std = normalisation(args.encoder, args.in_channels)
    return tuple(mean.flatten().tolist()), tuple(std.flatten().tolist())


def reference_loop(bench: Bench, batch: int) -> dict[str, Any]:
    from steelseg.losses import WeightedLoss
    from steelseg.model import build_network

    a, d, dev = bench.args, bench.data(), bench.device
    torch.backends.cudnn.benchmark = False  # the framework default the reference ran with
    mean, std = reference_stats(a)

    def loader(split: str, train: bool):
        ds = ReferenceStyleDataset(
            split_rows(d["prepared"], split), d["root"], bench.size, train, a.in_channels,
            mean, std,
        )  # fmt: skip
        return torch.utils.data.DataLoader(
            ds, batch_size=batch, shuffle=train, num_workers=bench.workers(),
            drop_last=train and len(ds) > batch, persistent_workers=bench.workers() > 0,
        )  # fmt: skip

    row: dict[str, Any] = {"batch": batch, "num_workers": bench.workers()}
    with bench.peaks.section(row):
        net = build_network(a.arch, a.encoder, None, a.in_channels, a.arch_kwargs).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)  # framework defaults
        loss_fn = WeightedLoss({"dice": 1.0})
        train_loader, val_loader = loader("train", True), loader("val", False)
        epochs, losses, ious = [], [], []
        t_fit = time.perf_counter()
        for _ in range(a.epochs):
            e: dict[str, float] = {"train_images": 0}
            start = now(dev)
            net.train()
            for x, y in train_loader:
                x, y = x.to(dev), y.to(dev)
                loss = loss_fn(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())  # the reference's per-step loss on the progress bar
                e["train_images"] += len(x)
            val_start = now(dev)
            net.eval()
            e["val_images"] = 0
            with torch.no_grad():
                for x, y in val_loader:
                    x, y = x.to(dev), y.to(dev)
                    pred, truth = net(x) > 0, y > 0.5  # logit 0 = probability 0.5
                    inter, union = (pred & truth).sum(), (pred | truth).sum()
                    ious.append(((inter + 1e-7) / (union + 1e-7)).item())
                    e["val_images"] += len(x)
            end = now(dev)
            e |= {"train_s": val_start - start, "val_s": end - val_start, "wall_s": end - start}
            epochs.append(e)
        row["fit_s"] = round(time.perf_counter() - t_fit, 2)
    row |= epoch_summary(epochs, row["fit_s"])
    row["last_loss"] = round(losses[-1], 4) if losses else None
    return row
