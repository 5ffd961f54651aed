"""Dataset and LightningDataModule over a prepared split (see :mod:`steelseg.prepare`).

Tensor contract, used by every module after this one:

* image: ``uint8 (C, H, W)`` grey pixel values (C = 1); the model converts to float and
  normalises on its device, so the DataLoader moves 4x fewer bytes.
* mask: ``float32 (1, H, W)`` in {0, 1}, the 4 defect classes merged.
* logits (model output): ``float (N, 1, H, W)``; probabilities only at the edges.

A batch is a dict ``{"image": (N, 1, H, W) uint8, "mask": (N, 1, H, W) float32, "image_id": list}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from steelseg import prepare as prep
from steelseg import rle
from steelseg.io import locked
from steelseg.runtime import STRIDE

log = logging.getLogger(__name__)


def check_size(height: int, width: int) -> None:
    """Reject a training size the encoders cannot take, naming the nearest valid ones."""
    for name, v in (("height", height), ("width", width)):
        if v < STRIDE or v % STRIDE:
            lo, hi = v // STRIDE * STRIDE, (v // STRIDE + 1) * STRIDE
            use = f"{lo} or {hi}" if lo >= STRIDE else str(hi)
            raise ValueError(
                f"data.{name}={v} must be a positive multiple of {STRIDE} (the "
                f"encoder halves it 5 times); use {use}"
            )


def train_transform(
    p_flip: float = 0.5,
    brightness: float = 0.2,
    contrast: float = 0.2,
    shift: float = 0.05,
    crop: Sequence[int] | None = None,
) -> A.Compose:
    """Augmentations for training (image already at training size): flips, light, small shift.

    Args:
        p_flip: Probability of each of the horizontal and vertical flips.
        brightness: Brightness change limit (fraction).
        contrast: Contrast change limit (fraction).
        shift: Largest translation, as a fraction of the size.
        crop: (height, width) of a random crop (multiples of 32), or None: training on crops
            of the full-size strip costs less per image; validation still sees whole images.
    """
    crops = []
    if crop is not None:
        check_size(*crop)
        crops = [A.RandomCrop(height=int(crop[0]), width=int(crop[1]))]
    return A.Compose(
        [
            *crops,
            A.HorizontalFlip(p=p_flip),
            A.VerticalFlip(p=p_flip),
            A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast, p=0.5),
            A.Affine(
                translate_percent={"x": (-shift, shift), "y": (-shift, shift)}, border_mode=0, p=0.3
            ),  # cv2.BORDER_CONSTANT: black, like an out-of-strip edge
        ]
    )


class SteelDataset(Dataset):
    """Images and merged masks of one split, from the uint8 cache or decoded from JPEG.

    Args:
        rows: Rows of ``split.csv`` (ImageId, EncodedPixels).
        data_dir: Kaggle-layout folder holding ``train_images/``.
        size: (height, width) to resize to.
        transform: Albumentations transform applied to (image, mask), or None.
        cache: ``(images, masks, positions)``: (M, H, W) uint8 arrays (memory maps) of the
            whole prepared split and the position in them of each of ``rows``; or None.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        data_dir: str | os.PathLike,
        size: tuple[int, int],
        transform: A.BasicTransform | None = None,
        cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.ids = rows["ImageId"].tolist()
        self.rles = rows["EncodedPixels"].tolist()
        self.data_dir = Path(data_dir)
        self.size = tuple(size)
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.cache is not None:
            images, masks, positions = self.cache
            image, mask = np.array(images[positions[i]]), np.array(masks[positions[i]])  # copies
        else:
            image, mask = prep.load_sample(self.data_dir, self.ids[i], self.rles[i], self.size)
        if self.transform is not None:
            # albumentations 2 seeds itself from the OS unless told; drawing its seed from torch
            # (seeded by seed_everything, per worker by Lightning) makes runs reproducible
            self.transform.set_random_seed(int(torch.randint(0, 2**31 - 1, ())))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image))[None],  # (1, H, W) uint8
            "mask": torch.from_numpy(np.ascontiguousarray(mask))[None].float(),  # (1, H, W)
            "image_id": self.ids[i],
        }


class SteelDataModule(pl.LightningDataModule):
    """Severstal data: prepares the split on first use, then serves train/val/test loaders.

    ``prepare_data()`` runs the same preparation as ``steelseg-prepare`` when no split exists
    yet (and generates the synthetic set first when ``synthetic`` is given and ``root`` is
    empty), so ``steelseg-train data.root=/path/to/severstal`` is all a user needs.

    Args:
        root: Kaggle-layout folder (``train.csv``, ``train_images/``).
        prepared_dir: Where split.csv (and the cache) go; default
            ``root/prepared/<hash of the selection parameters>``.
        n_images: Images to select (None: all).
        split: train,val,test counts or fractions.
        seed: Seed of selection and split.
        only_defective: The original task's protocol (see :func:`steelseg.prepare.select`).
        split_file: CSV of ``ImageId,split`` to reproduce a published split.
        val_fraction: Validation share carved from train when the protocol has none.
        skip_bad: Drop unreadable images with a warning instead of failing.
        height: Training height (multiple of 32).
        width: Training width (multiple of 32).
        cache: Decode images once into a uint8 cache at (height, width).
        augment: Keyword arguments of :func:`train_transform`, or None for no augmentation.
        batch_size: Batch size of every loader.
        num_workers: DataLoader workers (None: up to 4, by CPU count).
        pin_memory: Pin host memory (faster, asynchronous copies to a GPU); None: when the
            trainer runs on a CUDA device (or, outside a trainer, when CUDA is available).
        synthetic: ``{"n_images": N, "seed": S, "n_test": T}`` to generate a synthetic set at
            ``root`` when it has no train.csv, or None.
        extra_roots: More Kaggle-layout folders (e.g. pseudo-labels from ``steelseg-pseudo``)
            whose every image joins the training split only, never val/test; decoded from
            JPEG each epoch (no cache). Their train.csv may use ClassId 0 (any class).
    """

    def __init__(
        self,
        root: str,
        prepared_dir: str | None = None,
        n_images: int | None = 1000,
        split: Sequence[float] | None = (0.8, 0.1, 0.1),
        seed: int = 42,
        only_defective: bool = False,
        split_file: str | None = None,
        val_fraction: float = 0.1,
        skip_bad: bool = False,
        height: int = 256,
        width: int = 416,
        cache: bool = True,
        augment: dict[str, float] | None = None,
        batch_size: int = 8,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        synthetic: dict[str, int] | None = None,
        extra_roots: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        check_size(height, width)
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1")
        self.root = Path(root)
        split = None if split is None else tuple(split)
        self.params = prep.prepare_params(
            n_images, split, seed, only_defective, split_file, val_fraction, skip_bad
        )
        self.prepared_dir = (
            Path(prepared_dir)
            if prepared_dir
            else prep.default_prepared_dir(self.root, self.params)
        )
        self.kw = dict(
            n_images=n_images,
            split=split,
            seed=seed,
            only_defective=only_defective,
            split_file=split_file,
            val_fraction=val_fraction,
            skip_bad=skip_bad,
        )
        self.size = (height, width)
        self.use_cache = cache
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.pin_memory = pin_memory
        self.synthetic = synthetic
        self.extra_roots = [Path(r) for r in extra_roots or ()]
        self.datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ prepare (rank 0 only)
    def prepare_data(self) -> None:
        """Generate (synthetic), prepare and cache what is missing; reuse what is whole.

        Each shared artefact is built by one process at a time (:func:`steelseg.io.locked`):
        parallel jobs on a fresh data root wait for the first and reuse its work. A split that
        a killed run left incomplete is prepared again.
        """
        if self.synthetic is not None:
            from steelseg import synth

            if not synth.is_complete(self.root, **self.synthetic):
                log.info("generating synthetic Severstal-format data in %s", self.root)
                synth.generate(self.root, **self.synthetic)
        if not (self.root / "train.csv").exists():
            raise FileNotFoundError(
                f"data.root={self.root} has no train.csv. Download the Kaggle data "
                "(kaggle competitions download -c severstal-steel-defect-detection), unzip it "
                "there, or use data=synthetic"
            )
        with locked(self.prepared_dir, "the prepared split"):
            meta = prep.complete_split(self.prepared_dir)
            if meta is not None:
                if meta.get("split_sha256") != prep.file_digest(self.prepared_dir / "split.csv"):
                    log.warning(
                        "%s/split.csv was edited after it was prepared; using it as it is",
                        self.prepared_dir,
                    )
                self._check_prepared(meta)
            else:
                if (self.prepared_dir / "split.csv").exists():
                    log.warning(
                        "%s holds an incomplete split (no matching prepare.json: a run was "
                        "stopped while writing it); preparing it again",
                        self.prepared_dir,
                    )
                else:
                    log.info("preparing split in %s", self.prepared_dir)
                prep.prepare(self.root, self.prepared_dir, **self.kw)
            if self.use_cache:
                prep.build_cache(self.root, self.prepared_dir, self.size)

    def _check_prepared(self, meta: dict) -> None:
        """Fail if an existing split was made with other parameters or from other data."""
        if meta.get("params") != self.params:
            raise ValueError(
                f"the prepared split in {self.prepared_dir} was made with {meta.get('params')}, "
                f"but the config asks for {self.params}; delete that folder or set "
                "data.prepared_dir to another one"
            )
        digest = prep.file_digest(self.root / "train.csv")
        if meta.get("train_csv_sha256") != digest:
            raise ValueError(
                f"the prepared split in {self.prepared_dir} was made from another train.csv "
                f"(sha256 {meta.get('train_csv_sha256')}, now {digest}); delete that folder "
                "to prepare it again"
            )
        split_csv = self.prepared_dir / "split.csv"
        ids = pd.read_csv(split_csv, usecols=["ImageId"], dtype=str, keep_default_na=False)
        self._check_images_present(split_csv, ids["ImageId"])  # before the cache reads them

    def _check_images_present(self, split_csv: Path, image_ids: Sequence[str]) -> None:
        """Fail, naming a few, if images a prepared split lists are gone from the data."""
        for i, iid in enumerate(image_ids):  # an edited split must not escape the data folder
            rle.check_image_id(iid, f"{split_csv} line {i + 2}")
        present = set(prep.list_images(self.root))
        missing = [i for i in image_ids if i not in present]
        if missing:
            raise ValueError(
                f"{split_csv} does not match {self.root / 'train_images'}: {len(missing)} listed "
                f"image(s) are missing ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                "); delete the prepared folder or point data.root at the right data"
            )

    # ------------------------------------------------------------------ setup (every rank)
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        split_csv = self.prepared_dir / "split.csv"
        if not split_csv.exists():
            raise FileNotFoundError(
                f"{split_csv} does not exist; run prepare_data() first "
                "(Trainer.fit does) or steelseg-prepare"
            )
        rows = pd.read_csv(
            split_csv, dtype={"EncodedPixels": str, "classes": str}, keep_default_na=False
        )
        missing_cols = set(prep.SPLIT_COLUMNS[:3]) - set(rows.columns)
        if missing_cols:
            raise ValueError(f"{split_csv} lacks columns {sorted(missing_cols)}; re-run prepare")
        counts = rows["split"].value_counts()
        if counts.get("train", 0) == 0:
            raise ValueError(
                f"{split_csv} has no training images (counts: {counts.to_dict()});"
                " prepare it again with more images or another split"
            )
        self._check_images_present(split_csv, rows["ImageId"])
        cache = None
        cdir = prep.cache_dir(self.prepared_dir, self.size)
        if self.use_cache and (cdir / "masks.npy").exists():
            cache = (
                np.load(cdir / "images.npy", mmap_mode="r"),
                np.load(cdir / "masks.npy", mmap_mode="r"),
            )
            if len(cache[0]) != len(rows):
                raise ValueError(
                    f"cache {cdir} has {len(cache[0])} images, split.csv {len(rows)}; delete {cdir}"
                )
        aug = train_transform(**self.augment) if self.augment is not None else None
        for name in prep.SPLITS:
            idx = np.flatnonzero(rows["split"].to_numpy() == name)
            part_cache = (*cache, idx) if cache is not None else None
            self.datasets[name] = SteelDataset(
                rows.iloc[idx], self.root, self.size, aug if name == "train" else None, part_cache
            )
        if self.extra_roots:  # added to train only: val/test stay the labelled split's
            extra = [self._extra_dataset(r, aug) for r in self.extra_roots]
            self.datasets["train"] = ConcatDataset([self.datasets["train"], *extra])

    def _extra_dataset(self, root: Path, aug: A.BasicTransform | None) -> SteelDataset:
        """Every image of an extra Kaggle-layout folder, labelled by its train.csv."""
        rows = prep.image_labels(root, self.kw["skip_bad"], any_class=True)
        bad = prep.check_images(root, rows["ImageId"])
        if bad:
            listed = "; ".join(f"{k} ({v})" for k, v in list(bad.items())[:5])
            msg = f"data.extra_roots: {len(bad)} image(s) of {root} cannot be used: {listed}"
            if not self.kw["skip_bad"]:
                raise ValueError(msg + " (set data.skip_bad=true to drop them)")
            log.warning("%s; dropping them", msg)
            rows = rows[~rows["ImageId"].isin(bad)]
        log.info("data.extra_roots: %d training image(s) from %s", len(rows), root)
        return SteelDataset(rows, root, self.size, aug)

    # ------------------------------------------------------------------ loaders
    def _pin(self) -> bool:
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        ds = self.datasets[name]
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self._pin(),
            persistent_workers=self.num_workers > 0,  # no new worker processes every epoch
            # a last batch of 1 breaks batch-norm statistics in training
            drop_last=shuffle and len(ds) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
