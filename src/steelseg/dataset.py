"""Dataset and LightningDataModule over a prepared split (see :mod:`steelseg.prepare`).

Tensor contract, used by every module after this one:

* image: ``uint8 (C, H, W)`` grey pixel values (C = 1); the model converts to float and
  normalises on its device, so the DataLoader moves 4x fewer bytes.
* mask: ``float32 (C, H, W)`` in {0, 1}: C = 1 with the defect classes merged (binary
  models), or one channel per class (``model.classes=4``).
* label: ``float32 (C,)``: which classes the image (or its training crop) shows; the target of
  the optional image-level gate head.
* logits (model output): ``float (N, C, H, W)``; probabilities only at the edges.

A batch is a dict ``{"image": (N, 1, H, W) uint8, "mask": (N, C, H, W) float32,
"label": (N, C) float32, "image_id": list}``. Images are resized to ``height x width``
(the reference recipe's squash), or with ``crop`` kept at native resolution: random
``crop``-sized windows for training (see :func:`fit_crop` for images smaller than the crop),
whole images for validation and test.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# albumentations asks PyPI for a newer version at import (up to 2 s, and a warning, on the
# offline machines steelseg runs on: plant lines, GPU nodes); NO_ALBUMENTATIONS_UPDATE=0 asks again
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from steelseg import layouts, rle
from steelseg import prepare as prep
from steelseg.cache import build_cache, cache_dir, load_sample
from steelseg.io import file_digest, locked
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
    rot90: float = 0.0,
    blur: float = 0.0,
    noise: float = 0.0,
    blackout: float = 0.0,
    defect_crop: float = 0.0,
) -> A.Compose:
    """Augmentations for training (image already at training size): flips, light, small shift,
    and for square samples of a surface that has no up or down, quarter turns.

    Args:
        p_flip: Probability of each of the horizontal and vertical flips.
        brightness: Brightness change limit (fraction).
        contrast: Contrast change limit (fraction).
        shift: Largest translation, as a fraction of the size.
        crop: (height, width) of a random crop (multiples of 32), or None: training on crops
            of the full-size strip costs less per image; validation still sees whole images.
        rot90: Probability of a random quarter turn (square training samples only: a strip's
            256x1600 would not batch).
        blur: Probability of a slight Gaussian blur (camera focus).
        noise: Probability of Gaussian noise (sensor noise).
        blackout: Probability of the 1st-place Severstal solution's "defect blackout": the
            pixels of one defect class present in the sample are set to black and its label to
            background, so that the same steel is also seen without that defect, and black is
            seen as no defect (the dark area beyond a sheet edge). Albumentations' MaskDropout.
        defect_crop: With ``crop``, the probability that the window is placed on a defect of
            the image (albumentations' CropNonEmptyMaskIfExists; anywhere on a clean image).
            A 256x416 window of a 1600 px strip misses a given defect about 2 times in 3, so
            defects are seen that much more often at the same cost; clean images stay clean.
    """
    if not 0.0 <= defect_crop <= 1.0:
        raise ValueError(f"data.augment.defect_crop must be a probability (0-1), got {defect_crop}")
    crops = []
    if crop is not None:
        check_size(*crop)
        height, width = int(crop[0]), int(crop[1])
        window: A.BasicTransform = A.RandomCrop(height=height, width=width)
        if defect_crop:
            on_defect = A.CropNonEmptyMaskIfExists(height=height, width=width, p=defect_crop)
            anywhere = A.RandomCrop(height=height, width=width, p=1 - defect_crop)
            window = A.OneOf([on_defect, anywhere], p=1.0)
        crops = [window]
    extra = []
    if blackout:  # each class id is one "object" of MaskDropout: one class goes at a time
        extra.append(A.MaskDropout(max_objects=1, fill=0, fill_mask=0, p=blackout))
    if rot90:
        extra.append(A.RandomRotate90(p=rot90))
    if blur:
        extra.append(A.GaussianBlur(blur_limit=(3, 5), p=blur))
    if noise:
        extra.append(A.GaussNoise(std_range=(0.02, 0.06), p=noise))
    return A.Compose(
        [
            *crops,
            A.HorizontalFlip(p=p_flip),
            A.VerticalFlip(p=p_flip),
            *extra,
            A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast, p=0.5),
            A.Affine(
                translate_percent={"x": (-shift, shift), "y": (-shift, shift)}, border_mode=0, p=0.3
            ),  # cv2.BORDER_CONSTANT: black, like an out-of-strip edge
        ]
    )


def parse_crop(crop: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``data.crop`` (``"256x512"``, ``[256, 512]`` or None) -> (height, width) or None.

    Raises:
        ValueError: not HxW, or a side that is not a positive multiple of 32.
    """
    if crop is None or crop == "" or crop == "none":
        return None
    if isinstance(crop, str):
        parts = crop.lower().replace(",", "x").split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"data.crop={crop!r} must be HEIGHTxWIDTH, e.g. 256x512")
        crop = [int(p) for p in parts]
    if len(crop) != 2:
        raise ValueError(f"data.crop={crop!r} must be HEIGHTxWIDTH, e.g. 256x512")
    h, w = (int(v) for v in crop)
    for name, v in (("height", h), ("width", w)):
        if v < STRIDE or v % STRIDE:
            raise ValueError(
                f"data.crop={h}x{w}: the {name} {v} is not a positive multiple of {STRIDE} (the "
                f"encoder halves it 5 times); use {max(STRIDE, v // STRIDE * STRIDE)}"
            )
    return h, w


def fit_crop(
    crop: tuple[int, int], shapes: Sequence[tuple[int, int]], ids: Sequence[str]
) -> tuple[int, int]:
    """The training crop for images of these sizes, so that any mix of sizes trains.

    Per dimension: when ``crop`` is larger than every image, the crop follows the data (the
    largest multiple of :data:`~steelseg.runtime.STRIDE` not above the smallest image's side,
    at least one stride); else images smaller than the crop are padded to it by
    :func:`pad_to` (:class:`SteelDataset` ``pad_to``). Either is logged once.

    Args:
        crop: ``data.crop`` as (height, width).
        shapes: (height, width) of each training image.
        ids: The images' ids, to name one that is padded.

    Returns:
        The (height, width) of the training crops.
    """
    h, w = crop
    min_h, min_w = min(s[0] for s in shapes), min(s[1] for s in shapes)
    follow = (h > max(s[0] for s in shapes), w > max(s[1] for s in shapes))
    fit_h = max(STRIDE, min_h // STRIDE * STRIDE) if follow[0] else h
    fit_w = max(STRIDE, min_w // STRIDE * STRIDE) if follow[1] else w
    if any(follow):
        along = "" if all(follow) else " in height" if follow[0] else " in width"
        log.info(
            "data.crop=%dx%d is larger than every image%s (smallest %dx%d): training on %dx%d "
            "crops",
            h, w, along, min_h, min_w, fit_h, fit_w,
        )  # fmt: skip
    small = [(iid, s) for iid, s in zip(ids, shapes) if s[0] < fit_h or s[1] < fit_w]
    if small:
        iid, (ih, iw) = small[0]
        log.info(
            "%d of %d training images are smaller than the %dx%d crop (e.g. %s, %dx%d): padded "
            "to it, the image by reflection, the mask with background",
            len(small), len(shapes), fit_h, fit_w, iid, ih, iw,
        )  # fmt: skip
    return fit_h, fit_w


def pad_to(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Pad an image smaller than ``size`` at the bottom and right, as the model pads whole
    images to its stride: the image by reflection, the mask with background (0).

    Shape:
        image, mask: (H, W) uint8. Returns both (max(H, height), max(W, width)).
    """
    ph, pw = max(0, size[0] - image.shape[0]), max(0, size[1] - image.shape[1])
    if not (ph or pw):
        return image, mask
    return (
        cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REFLECT_101),  # torch's "reflect"
        cv2.copyMakeBorder(mask, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0),
    )


def repeat_factors(classes: Sequence[str], threshold: float) -> np.ndarray:
    """How often each image is seen per epoch under class-balanced oversampling.

    The repeat factors of LVIS (Gupta et al. 2019), as mmdet's and mmseg's
    ``ClassBalancedDataset`` apply them: a class shown in a share ``f`` of the images gets
    ``max(1, sqrt(threshold / f))``; an image takes that of its rarest class, rounded up, and a
    clean image 1. Rare defects are then seen often enough to be learned, common ones as before.

    Args:
        classes: Per image, the classes it shows, space-separated (split.csv's ``classes``:
            ``""``, ``"3"``, ``"1 3"``).
        threshold: Classes shown in fewer than this share of the images are repeated.

    Returns:
        (N,) int: the repeats of each image, >= 1.
    """
    shown = [str(c).split() for c in classes]
    counts = Counter(c for cs in shown for c in set(cs))
    factor = {c: max(1.0, math.sqrt(threshold * len(shown) / n)) for c, n in counts.items()}
    return np.array([math.ceil(max((factor[c] for c in cs), default=1.0)) for cs in shown], int)


def targets(mask: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A class-id mask -> the model's targets.

    Shape:
        mask: (H, W) uint8 class ids (0 = background). Returns (mask (C, H, W) float32 in
        {0, 1}, label (C,) float32: 1 where the class is present), C = ``classes``; with
        ``classes=1`` every defect class is merged into one channel.
    """
    if classes == 1:
        onehot = (mask > 0)[None]
    else:
        onehot = mask[None] == np.arange(1, classes + 1, dtype=np.uint8)[:, None, None]
    return onehot.astype(np.float32), onehot.any(axis=(1, 2)).astype(np.float32)


class SteelDataset(Dataset):
    """Images with their per-class (or merged) masks, from the uint8 cache or decoded.

    Args:
        rows: Rows of ``split.csv`` (see :mod:`steelseg.prepare`).
        data_dir: Data root holding the images (``train_images/`` or ``images/``).
        size: (height, width) to resize to; None: each image's own size (native resolution).
        classes: 1 (merged defect mask) or the data's number of classes (one channel each).
        transform: Albumentations transform applied to (image, mask), or None.
        cache: ``(images, masks, positions)``: (M, H, W) uint8 arrays (memory maps) of the
            whole prepared split and the position in them of each of ``rows``; or None.
        pad_to: (height, width) that smaller images are padded to before ``transform``
            (see :func:`pad_to`), or None.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        data_dir: str | os.PathLike,
        size: tuple[int, int] | None,
        classes: int = 1,
        transform: A.BasicTransform | None = None,
        cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        pad_to: tuple[int, int] | None = None,
    ) -> None:
        self.records = rows.to_dict("records")
        self.ids = [r["ImageId"] for r in self.records]
        self.data_dir = Path(data_dir)
        self.size = tuple(size) if size is not None else None
        self.classes = int(classes)
        self.transform = transform
        self.cache = cache
        self.pad_to = pad_to

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.cache is not None:
            images, masks, positions = self.cache
            image, mask = np.array(images[positions[i]]), np.array(masks[positions[i]])  # copies
        else:
            r = self.records[i]
            image, mask = load_sample(
                self.data_dir, r["ImageId"], layouts.row_masks(r), self.size, layouts.row_shape(r)
            )
        if self.pad_to is not None:
            image, mask = pad_to(image, mask, self.pad_to)
        if self.transform is not None:
            # albumentations 2 seeds itself from the OS unless told; drawing its seed from torch
            # (seeded by seed_everything, per worker by Lightning) makes runs reproducible
            self.transform.set_random_seed(int(torch.randint(0, 2**31 - 1, ())))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        target, label = targets(mask, self.classes)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image))[None],  # (1, H, W) uint8
            "mask": torch.from_numpy(target),  # (C, H, W) float32
            "label": torch.from_numpy(label),  # (C,): the classes present (image-level gate)
            "image_id": self.ids[i],
        }


class SteelDataModule(pl.LightningDataModule):
    """Severstal data: prepares the split on first use, then serves train/val/test loaders.

    ``prepare_data()`` runs the same preparation as ``steelseg-prepare`` when no split exists
    yet (and generates the synthetic set first when ``synthetic`` is given and ``root`` is
    empty), so ``steelseg-train data.root=/path/to/severstal`` is all a user needs.

    Args:
        root: Kaggle-layout folder (``train.csv``, ``train_images/``) or folder layout
            (``images/``, ``masks/``: a plant's own data, see
            :func:`steelseg.layouts.folder_labels`).
        prepared_dir: Where split.csv (and the cache) go; default
            ``root/prepared/<hash of the selection parameters>``.
        n_images: Images to select (None: all).
        split: train,val,test counts or fractions.
        seed: Seed of selection and split.
        only_defective: The original task's protocol (see :func:`steelseg.prepare.select`).
        split_file: CSV of ``ImageId,split`` to reproduce a published split.
        val_fraction: Validation share carved from train when the protocol has none.
        skip_bad: Drop unreadable images with a warning instead of failing.
        height: Training height (multiple of 32); ignored with ``crop``.
        width: Training width (multiple of 32); ignored with ``crop``.
        crop: ``"HxW"`` (or ``[H, W]``): train on random windows of this size taken from the
            native-resolution images, validate and test on whole images; None: resize every
            image to ``height x width``. Images smaller than the crop are padded, or the crop
            follows the data when it is larger than every image (:func:`fit_crop`).
        classes: Target channels: 1 (the defect classes merged) or the data's number of
            classes (Severstal: 4); the model's ``classes``.
        cache: Decode images once into a uint8 cache at (height, width), or at native size
            with ``crop`` (when every image has the same size).
        augment: Keyword arguments of :func:`train_transform`, or None for no augmentation.
        batch_size: Batch size of every loader.
        num_workers: DataLoader workers (None: up to 4, by CPU count).
        pin_memory: Pin host memory (faster, asynchronous copies to a GPU); None: when the
            trainer runs on a CUDA device (or, outside a trainer, when CUDA is available).
        synthetic: ``{"n_images": N, "seed": S, "n_test": T}`` to generate a synthetic set at
            ``root`` when it has no train.csv, or None. Ignored (with an info log) when
            ``root`` is in the folder layout (``images/``, ``masks/``), whichever experiment
            set it.
        extra_roots: More labelled folders whose every image joins the training split only,
            never val/test; decoded each epoch (no cache). Kaggle layout (e.g. pseudo-labels
            from ``steelseg-pseudo``; its train.csv may use ClassId 0, any class) or folder
            layout (``images/`` + ``masks/``, e.g. a corrected review task from
            ``steelseg-import``; masks read as the data's, with ``n_classes``).
        n_classes: The classes of a folder layout's masks (pixel values 1..n_classes; a
            larger value is an error); part of the split's parameters. Unused by the Kaggle
            layout.
        train_fraction: Train on this share, in (0, 1], of the split's training images (at
            least one), stratified by the classes each image shows and seeded by ``seed``; val,
            test and the prepared split stay the same (a learning curve, see docs/sweeps.md).
        group_split: Keep each group of near-duplicate images (copies, flipped or rotated
            copies) on one side of the split (:func:`steelseg.prepare.group_sides`); part of
            the split's parameters.
        oversample_thr: Class-balanced oversampling of the training images (mmdet's and
            mmseg's ``ClassBalancedDataset``, LVIS repeat factors): an image is seen
            ``ceil(max(1, sqrt(oversample_thr / f)))`` times per epoch, ``f`` the share of
            training images showing its rarest class; 0: off (:func:`repeat_factors`). The
            images of ``extra_roots`` are not repeated.
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
        crop: str | Sequence[int] | None = None,
        classes: int = 1,
        cache: bool = True,
        augment: dict[str, float] | None = None,
        batch_size: int = 8,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        synthetic: dict[str, int] | None = None,
        extra_roots: Sequence[str] | None = None,
        n_classes: int = 1,
        train_fraction: float = 1.0,
        group_split: bool = False,
        oversample_thr: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(oversample_thr) <= 1.0:
            raise ValueError(
                f"data.oversample_thr={oversample_thr} must be in [0, 1] (0: off), e.g. 0.3 to "
                "repeat images of classes shown in fewer than 30% of the training images"
            )
        self.oversample_thr = float(oversample_thr)
        if not 0.0 < float(train_fraction) <= 1.0:
            raise ValueError(
                f"data.train_fraction={train_fraction} must be in (0, 1], e.g. 0.25 to train on "
                "a quarter of the training images"
            )
        self.train_fraction = float(train_fraction)
        self.crop = parse_crop(crop)
        self.train_crop = self.crop  # fitted to the training images in setup()
        if self.crop is None:
            check_size(height, width)
        if int(classes) < 1:
            raise ValueError(f"classes={classes} must be >= 1")
        self.classes = int(classes)
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1")
        self.root = Path(root)
        split = None if split is None else tuple(split)
        self.n_classes = int(n_classes)
        self.kw = dict(  # prepare()'s arguments: the settings that decide the split
            n_images=n_images,
            split=split,
            seed=seed,
            only_defective=only_defective,
            split_file=split_file,
            val_fraction=val_fraction,
            skip_bad=skip_bad,
            n_classes=self.n_classes,
            group_split=group_split,
        )
        self.params = prep.prepare_params(self.root, self.kw)
        self.prepared_dir = prep.prepared_dir_for(
            {"root": self.root, "prepared_dir": prepared_dir, **self.kw}
        )
        self.size: tuple[int, int] | None = None if self.crop else (height, width)
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
        if self.synthetic is not None and layouts.is_folder_layout(self.root):
            log.info(  # e.g. experiment=quickstart data=folder: its generator is for data=synthetic
                "data.root=%s holds images/ + masks/ (the folder layout): no synthetic data is "
                "generated (data.synthetic ignored)",
                self.root,
            )
            self.synthetic = None
        if self.synthetic is not None:
            from steelseg import synth

            if not synth.is_complete(self.root, **self.synthetic):
                log.info("generating synthetic Severstal-format data in %s", self.root)
                synth.generate(self.root, **self.synthetic)
        if (
            not layouts.is_folder_layout(self.root)
            and not (self.root / layouts.KAGGLE_CSV).exists()
        ):
            raise FileNotFoundError(
                f"data.root={self.root} has no train.csv. Download the Kaggle data "
                "(kaggle competitions download -c severstal-steel-defect-detection), unzip it "
                "there, or use data=synthetic, or data=folder for images/ + masks/"
            )
        with locked(self.prepared_dir, "the prepared split"):
            meta = prep.complete_split(self.prepared_dir)
            if meta is not None and meta.get("version") != prep.PREPARE_VERSION:
                log.info(
                    "%s was prepared by an older steelseg (no per-class masks); preparing it again",
                    self.prepared_dir,
                )
                prep.prepare(self.root, self.prepared_dir, **self.kw)
            elif meta is not None:
                if meta.get("split_sha256") != file_digest(self.prepared_dir / "split.csv"):
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
            size = self.cache_size()
            if size is not None:
                build_cache(self.root, self.prepared_dir, size)

    def cache_size(self) -> tuple[int, int] | None:
        """(height, width) of the cache this data uses: the training size, the images' own
        size with ``crop`` when they all share one; None: no cache."""
        if not self.use_cache:
            return None
        if self.size is not None:
            return self.size
        shapes = self._shapes(layouts.read_split(self.prepared_dir / "split.csv"))
        if len(set(shapes)) == 1:
            return shapes[0]
        log.info("images of several sizes: decoding them every epoch (no cache)")
        return None

    @staticmethod
    def _shapes(rows: pd.DataFrame) -> list[tuple[int, int]]:
        return [layouts.row_shape(r) for r in rows.to_dict("records")]

    def _check_prepared(self, meta: dict) -> None:
        """Fail if an existing split was made with other parameters or from other data."""
        if not prep.same_params(meta.get("params"), self.params):
            raise ValueError(
                f"the prepared split in {self.prepared_dir} was made with {meta.get('params')}, "
                f"but the config asks for {self.params}; delete that folder or set "
                "data.prepared_dir to another one"
            )
        key, digest = layouts.labels_digest(self.root)
        if meta.get(key) != digest:
            labels = (
                layouts.KAGGLE_CSV
                if key == layouts.TRAIN_CSV_DIGEST
                else f"{layouts.FOLDER_MASKS}/"
            )
            raise ValueError(
                f"the prepared split in {self.prepared_dir} was made from another {labels} "
                f"(sha256 {meta.get(key)}, now {digest}); delete that folder "
                "to prepare it again"
            )
        split_csv = self.prepared_dir / "split.csv"
        ids = pd.read_csv(split_csv, usecols=["ImageId"], dtype=str, keep_default_na=False)
        self._check_images_present(split_csv, ids["ImageId"])  # before the cache reads them

    def _check_images_present(self, split_csv: Path, image_ids: Sequence[str]) -> None:
        """Fail, naming a few, if images a prepared split lists are gone from the data."""
        for i, iid in enumerate(image_ids):  # an edited split must not escape the data folder
            rle.check_image_id(iid, f"{split_csv} line {i + 2}")
        present = set(layouts.list_images(self.root))
        missing = [i for i in image_ids if i not in present]
        if missing:
            raise ValueError(
                f"{split_csv} does not match {layouts.image_dir(self.root)}: {len(missing)} listed "
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
        rows = layouts.read_split(split_csv)
        missing_cols = set(prep.SPLIT_COLUMNS[:3]) - set(rows.columns)
        if missing_cols:
            raise ValueError(f"{split_csv} lacks columns {sorted(missing_cols)}; re-run prepare")
        counts = rows["split"].value_counts()
        needed = {"train": "training", "val": "validation"}
        if stage not in (None, "fit", "validate"):
            del needed["val"]
        for split, name in needed.items():
            if counts.get(split, 0) == 0:  # before any training, not after the first epoch
                have = ", ".join(f"{s} {counts.get(s, 0)}" for s in prep.SPLITS)
                raise ValueError(
                    f"{split_csv} has no {name} images ({have}); prepare it again with more "
                    "images or another split (data.split=[train,val,test] as counts or fractions)"
                )
        layouts.check_classes(
            self.classes, layouts.data_classes(list(rows.columns)), str(self.root)
        )
        self._check_images_present(split_csv, rows["ImageId"])
        shapes = self._shapes(rows)
        if self.crop is not None:
            train = rows["split"].to_numpy() == "train"
            ids = rows["ImageId"][train].tolist()
            self.train_crop = fit_crop(self.crop, [s for s, t in zip(shapes, train) if t], ids)
        #: whether validation/test images all have one size (else they go one per batch)
        self.uniform = len(set(shapes)) == 1
        cache = None
        size = self.cache_size()
        cdir = cache_dir(self.prepared_dir, size) if size is not None else None
        if cdir is not None and (cdir / "masks.npy").exists():
            cache = (
                np.load(cdir / "images.npy", mmap_mode="r"),
                np.load(cdir / "masks.npy", mmap_mode="r"),
            )
            if len(cache[0]) != len(rows):
                raise ValueError(
                    f"cache {cdir} has {len(cache[0])} images, split.csv {len(rows)}; delete {cdir}"
                )
        aug = self.train_transform()
        for name in prep.SPLITS:
            idx = np.flatnonzero(rows["split"].to_numpy() == name)
            if name == "train":
                idx = self._oversample(rows, self._train_subset(rows, idx))
            part_cache = (*cache, idx) if cache is not None else None
            self.datasets[name] = SteelDataset(
                rows.iloc[idx],
                self.root,
                self.size,
                self.classes,
                aug if name == "train" else None,
                part_cache,
                self.train_crop if name == "train" else None,
            )
        if self.extra_roots:  # added to train only: val/test stay the labelled split's
            extra = [self._extra_dataset(r, aug) for r in self.extra_roots]
            self.datasets["train"] = ConcatDataset([self.datasets["train"], *extra])

    def _train_subset(self, rows: pd.DataFrame, idx: np.ndarray) -> np.ndarray:
        """The positions of ``rows`` to train on: ``train_fraction`` of the training rows
        ``idx``, stratified by the classes each image shows (as the split is) and seeded."""
        if self.train_fraction == 1.0:
            return idx
        k = max(1, int(round(self.train_fraction * len(idx))))
        keys = rows["classes"].iloc[idx].reset_index(drop=True)
        picked = idx[prep.stratified_pick(keys, k, np.random.default_rng(self.kw["seed"]))]
        log.info(
            "training on %d of %d train images (data.train_fraction=%g)",
            k,
            len(idx),
            self.train_fraction,
        )
        return picked

    def _oversample(self, rows: pd.DataFrame, idx: np.ndarray) -> np.ndarray:
        """``idx`` with each training image repeated by its class-balanced repeat factor."""
        if not self.oversample_thr:
            return idx
        repeats = repeat_factors(rows["classes"].iloc[idx], self.oversample_thr)
        log.info(
            "class-balanced oversampling (data.oversample_thr=%g): %d training samples per "
            "epoch from %d images (%s)",
            self.oversample_thr,
            repeats.sum(),
            len(idx),
            ", ".join(f"{n} images x{r}" for r, n in sorted(Counter(repeats).items()) if r > 1)
            or "no class rare enough to repeat",
        )
        return np.repeat(idx, repeats)

    def train_transform(self) -> A.BasicTransform | None:
        """The training augmentation, with the random native-resolution crop when set."""
        crop = self.train_crop
        if self.augment is not None:
            crop = crop or self.augment.get("crop")  # augment.crop: of the resized image
            return train_transform(**{**self.augment, "crop": crop})
        return A.Compose([A.RandomCrop(*crop)]) if crop is not None else None

    def _extra_dataset(self, root: Path, aug: A.BasicTransform | None) -> SteelDataset:
        """Every image of an extra folder: Kaggle layout (labelled by its train.csv) or folder
        layout (by its masks/)."""
        rows = layouts.image_labels(
            root, self.kw["skip_bad"], any_class=True, n_classes=self.n_classes
        )
        bad = layouts.check_images(root, rows["ImageId"], layouts.image_shapes(rows))
        if bad:
            listed = "; ".join(f"{k} ({v})" for k, v in list(bad.items())[:5])
            msg = f"data.extra_roots: {len(bad)} image(s) of {root} cannot be used: {listed}"
            if not self.kw["skip_bad"]:
                raise ValueError(msg + " (set data.skip_bad=true to drop them)")
            log.warning("%s; dropping them", msg)
            rows = rows[~rows["ImageId"].isin(bad)]
        layouts.check_classes(
            self.classes, layouts.data_classes(list(rows.columns)), f"data.extra_roots {root}"
        )
        log.info("data.extra_roots: %d training image(s) from %s", len(rows), root)
        return SteelDataset(rows, root, self.size, self.classes, aug, pad_to=self.train_crop)

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
        # whole images of several sizes cannot share a batch
        whole = not shuffle and self.size is None and not getattr(self, "uniform", True)
        return DataLoader(
            ds,
            batch_size=1 if whole else self.batch_size,
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
