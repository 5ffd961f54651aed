"""``steelseg-eval``: evaluate a checkpoint on a labelled split, with and without post-processing.

::

    steelseg-eval outputs/train/runs/<time>/checkpoints/best-*.ckpt --split test

runs the model at full resolution (256x1600) over the split and writes into ``--out`` (default
``<run>/eval/<checkpoint>-<split>/``):

* ``eval.json``: pixel IoU / Dice, per-image Dice (Kaggle rule), image-level detection
  (precision, recall, F1, ROC AUC of "this image has a defect" scored by the maximum
  probability and by the predicted area, the empty vs non-empty confusion) and defect-level
  recall / precision, each for the threshold alone (``threshold_only``: the model's own
  threshold) and for the post-processing in use (``postprocessed``: the tuned sidecar, or
  defaults, with command-line overrides); a threshold curve; per-image numbers.
* ``report.html``: the same as a self-contained page (see :mod:`steelseg.report`).

:func:`labelled_split` finds the images and masks of a run's prepared split; the tuner uses it too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelseg import metric, report, rle
from steelseg import prepare as prep
from steelseg.checkpoint import run_folder
from steelseg.io import atomic_write_text, json_ready, read_grey
from steelseg.postprocess import PostProcess
from steelseg.predict import Predictor, Skipped, Source, log_skip

log = logging.getLogger(__name__)

VARIANTS = ("threshold_only", "postprocessed")


# ----------------------------------------------------------------------------- labelled split
def _run_data_config(run: Path) -> dict[str, Any] | None:
    """The ``data`` section of the run's ``config.yaml`` (written by steelseg-train), or None."""
    from omegaconf import OmegaConf

    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        return None
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"{cfg_path} has no 'data' section; pass --data-root and --split-file")
    return data


def _prepared_split_csv(data: Mapping[str, Any], root: Path) -> Path:
    """Where split.csv of the run's data parameters is for ``root``: the run's prepared_dir
    when ``root`` is the run's own data folder, else the default folder inside ``root``."""
    same_root = Path(data.get("root", "")).resolve() == root.resolve()
    if data.get("prepared_dir") and same_root:
        return Path(data["prepared_dir"]) / "split.csv"
    split = data.get("split")
    params = prep.prepare_params(
        data.get("n_images"),
        None if split is None else tuple(split),
        data.get("seed", 42),
        data.get("only_defective", False),
        data.get("split_file"),
        data.get("val_fraction", 0.1),
        data.get("skip_bad", False),
    )
    return prep.default_prepared_dir(root, params) / "split.csv"


def labelled_split(
    checkpoint_or_run: str | os.PathLike,
    split: str = "val",
    data_root: str | os.PathLike | None = None,
    split_file: str | os.PathLike | None = None,
) -> tuple[list[str], list[Path], Callable[[str], np.ndarray]]:
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
        See :func:`steelseg.prepare.labelled_images`.

    Raises:
        FileNotFoundError: the run, data folder or split file is missing.
        ValueError: unknown split, malformed split file, or an empty split.
    """
    if split not in prep.SPLIT_CHOICES:
        raise ValueError(f"unknown split {split!r}; choose from {list(prep.SPLIT_CHOICES)}")
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
        prepared = _prepared_split_csv(data, root)
        if prepared.is_file() or split != "all":  # else: every labelled image of the folder
            csv = prepared
        if prepared.is_file() and prep.complete_split(prepared.parent) is None:
            raise ValueError(
                f"the prepared split {prepared} is incomplete (no matching prepare.json: a run "
                "was stopped while writing it); run steelseg-train or steelseg-prepare again, "
                "or pass --split-file"
            )
    if csv is None and split != "all" and (root / "train_images").is_dir():
        raise FileNotFoundError(
            f"{run} has no config.yaml to find the prepared split in; pass --split-file, or "
            "--split all for every labelled image of the folder"
        )
    return prep.labelled_images(root, csv, split)


# ----------------------------------------------------------------------------- scoring
class Scorer:
    """Accumulates every evaluation number image by image, so no probability map is kept.

    Args:
        variants: Named post-processings to score (e.g. threshold only, tuned).
        thresholds: Thresholds of the threshold curve.
        iou_threshold: Component IoU for defect-level matching.
        keep_masks: Variants whose predicted masks are kept (as RLE, in :attr:`masks`) for
            drawing them later.
    """

    def __init__(
        self,
        variants: Mapping[str, PostProcess],
        thresholds: Sequence[float] = metric.SWEEP_THRESHOLDS,
        iou_threshold: float = 0.5,
        keep_masks: Sequence[str] = (),
    ) -> None:
        self.variants = dict(variants)
        self.thresholds = [float(t) for t in thresholds]
        self.iou_threshold = iou_threshold
        self.images: list[dict[str, Any]] = []
        self.masks: dict[str, dict[str, str]] = {name: {} for name in keep_masks}  # RLEs
        self._curve: list[np.ndarray] = []  # per image (3, T): tp, fp, fn

    def add(self, image_id: str, prob: np.ndarray, target: np.ndarray) -> dict[str, Any]:
        """Score one image: probabilities and ground truth, both (H, W)."""
        if prob.shape != target.shape:
            raise ValueError(f"{image_id}: probabilities {prob.shape} vs mask {target.shape}")
        target = target.astype(bool)
        row: dict[str, Any] = {
            "image_id": image_id,
            "gt_pixels": int(target.sum()),
            "max_prob": float(prob.max()),
        }
        for name, pp in self.variants.items():
            pred = pp.apply(prob)
            tp, fp, fn = metric.mask_counts(pred, target)
            n_true, found, n_pred, matched = metric.defect_counts(pred, target, self.iou_threshold)
            row[name] = {
                "pred_pixels": tp + fp,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "dice": float(metric.dice_per_image(tp, fp, fn)),  # Kaggle rule
                "defects": [n_true, found, n_pred, matched],
            }
            if name in self.masks:
                self.masks[name][image_id] = rle.encode(pred)
        self._curve.append(np.stack(metric.counts_at_thresholds(prob, target, self.thresholds)))
        self.images.append(row)
        return row

    def curve(self) -> list[dict[str, float]]:
        """IoU, Dice and per-image Dice at each curve threshold (before area filters)."""
        if not self._curve:
            return []
        c = np.stack(self._curve)  # (N, 3, T)
        return metric.threshold_curve(c[:, 0], c[:, 1], c[:, 2], self.thresholds)

    def summary(self, name: str) -> dict[str, Any]:
        """Pixel, image-level and defect-level metrics of one variant."""
        rows = [r[name] for r in self.images]
        has = np.array([r["gt_pixels"] > 0 for r in self.images], dtype=bool)
        area = np.array([r["pred_pixels"] for r in rows], dtype=np.int64)
        max_prob = np.array([r["max_prob"] for r in self.images], dtype=np.float64)
        image = metric.image_detection(area > 0, has, scores=max_prob)
        image["roc_auc_max_prob"] = image.pop("roc_auc")
        image["roc_auc_area"] = metric.roc_auc(area, has) if len(has) else math.nan
        image["confusion"] = {
            "empty_predicted_empty": image["tn"],
            "empty_predicted_defect": image["fp"],
            "defect_predicted_empty": image["fn"],
            "defect_predicted_defect": image["tp"],
        }
        defects = np.array([r["defects"] for r in rows], dtype=np.int64).reshape(-1, 4).sum(0)
        return {
            "postprocess": self.variants[name].to_dict(),
            "pixel": metric.pixel_scores(
                *(np.array([r[k] for r in rows]) for k in ("tp", "fp", "fn"))
            ),
            "image": image,
            "defect": {"iou_threshold": self.iou_threshold, **metric.defect_scores(*defects)},
        }


# ----------------------------------------------------------------------------- evaluation
def default_out_dir(checkpoint: Path, split: str) -> Path:
    """``<run>/eval/<checkpoint name>-<split>``."""
    return run_folder(checkpoint) / "eval" / f"{checkpoint.stem}-{split}"


def evaluate(
    checkpoint: str | os.PathLike,
    split: str = "test",
    data_root: str | os.PathLike | None = None,
    split_file: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    tta: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    use_tuned: bool = True,
    device: str | None = None,
    batch_size: int = 8,
    iou_threshold: float = 0.5,
    max_panels: int = 50,
    panel_width: int = 800,
    progress: bool | None = True,
    on_skip: Callable[[Source, str], None] = log_skip,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a labelled split; write ``eval.json`` and ``report.html``.

    Args:
        checkpoint: A steelseg checkpoint (``.ckpt``).
        split: ``train``, ``val``, ``test`` or ``all`` (see :func:`labelled_split`).
        data_root: Data folder, default the run's.
        split_file: A prepared split.csv, default the run's.
        out: Output folder (default ``<run>/eval/<checkpoint>-<split>``).
        tta: Test-time flips (``hflip``, ``vflip``); None: the tuned ones (or none).
        overrides: :class:`~steelseg.postprocess.PostProcess` fields replacing the tuned or
            default values, e.g. ``{"min_total_area": 500}``.
        use_tuned: Start from the tuned sidecar beside the checkpoint when there is one.
        device: ``cpu``, ``cuda``, ...; None: a GPU when present.
        batch_size: Images per forward pass.
        iou_threshold: Component IoU at which a true defect counts as found.
        max_panels: Per-image panels in the report (worst first).
        panel_width: Width in pixels of each panel picture (images are 1600 wide).
        progress: Show a progress bar (None: on a terminal).
        on_skip: Told each image that cannot be read (or is not 1600x256) and why.

    Returns:
        The content of ``eval.json`` (NaN as None).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    ids, paths, mask_of = labelled_split(checkpoint, split, data_root, split_file)
    out = Path(out) if out is not None else default_out_dir(checkpoint, split)
    predictor = Predictor.from_checkpoint(
        checkpoint, device=device, tta=tta, batch_size=batch_size, use_tuned=use_tuned
    )
    post = dataclasses.replace(predictor.postprocess, **dict(overrides or {}))
    plain = PostProcess(threshold=float(predictor.module.hparams.threshold))
    scorer = Scorer(
        {"threshold_only": plain, "postprocessed": post},
        iou_threshold=iou_threshold,
        keep_masks=["postprocessed"],  # drawn in the report
    )

    skipped = Skipped(on_skip)
    start = time.perf_counter()
    sources = [Source(p, i) for i, p in zip(ids, paths)]
    for p in predictor.predict_files(
        sources, rle.SHAPE, on_skip=skipped, progress=progress, desc=f"eval {split}"
    ):
        scorer.add(p.source.image_id, p.prob, mask_of(p.source.image_id))
    seconds = time.perf_counter() - start
    if not scorer.images:
        raise ValueError(f"no image of split {split!r} could be read; see the messages above")

    result = json_ready(
        {
            "checkpoint": str(checkpoint.resolve()),
            "split": split,
            "data_root": str(paths[0].parent.parent.resolve()),
            "n_images": len(scorer.images),
            "n_defective": sum(r["gt_pixels"] > 0 for r in scorer.images),
            "tta": list(predictor.tta),
            "device": str(predictor.device),
            "tuned_sidecar": str(predictor.tuned_sidecar) if predictor.tuned_sidecar else None,
            "overrides": dict(overrides or {}),
            "seconds": round(seconds, 2),
            "images_per_s": round(len(scorer.images) / max(seconds, 1e-9), 3),
            "metrics": {name: scorer.summary(name) for name in VARIANTS},
            "threshold_curve": scorer.curve(),
            "images": scorer.images,
            "skipped": skipped.by_id(),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", json.dumps(result, indent=1) + "\n")

    path_of = dict(zip(ids, paths))

    def load_panel(image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pred = rle.decode(scorer.masks["postprocessed"][image_id]) > 0
        return read_grey(path_of[image_id]), pred, mask_of(image_id)

    report.write_report(result, load_panel, out / "report.html", max_panels, panel_width)
    return result
