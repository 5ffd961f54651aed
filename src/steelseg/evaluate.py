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
from steelseg.postprocess import ClassPostProcess, PostProcess, replaced
from steelseg.predict import Predictor, Skipped, Source, apply_postprocess, log_skip
from steelseg.runtime import DICE_TOLERANCE, FILE_FORMATS, installed, load_metadata

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
        prep.layout_n_classes(root, data.get("n_classes")),
    )
    return prep.default_prepared_dir(root, params) / "split.csv"


def model_checkpoint(model: str | os.PathLike) -> Path:
    """The checkpoint behind a model file, whose run holds the labelled splits: the file
    itself, or the checkpoint an export was made from (named in its metadata)."""
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix.lower() in FILE_FORMATS:
        source = load_metadata(path).get("checkpoint")
        return Path(source) if source else path
    return path


def labelled_split(
    checkpoint_or_run: str | os.PathLike,
    split: str = "val",
    data_root: str | os.PathLike | None = None,
    split_file: str | os.PathLike | None = None,
) -> tuple[list[str], list[Path], prep.MaskReader]:
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


def labelled_sources(
    checkpoint: str | os.PathLike,
    split: str,
    data_root: str | os.PathLike | None,
    split_file: str | os.PathLike | None,
) -> tuple[list[Source], Any] | None:
    """:func:`labelled_split` as sources and a mask reader, or None (logged) when the
    checkpoint has no run to find them in and no ``data_root`` or ``split_file`` was given."""
    try:
        ids, paths, mask_of = labelled_split(checkpoint, split, data_root, split_file)
    except FileNotFoundError as e:
        if data_root is not None or split_file is not None:
            raise
        log.debug("no labelled %s split (%s)", split, e)
        return None
    return [Source(p, i) for i, p in zip(ids, paths)], mask_of


# ----------------------------------------------------------------------------- scoring
class Scorer:
    """Accumulates every evaluation number image by image, so no probability map is kept.

    Args:
        variants: Named post-processings to score (e.g. threshold only, tuned).
        thresholds: Thresholds of the threshold curve.
        iou_threshold: Component IoU for defect-level matching.
        keep_masks: Variants whose predicted masks are kept (as RLE, in :attr:`masks`; one
            per class for a multi-class model) for drawing them later.
        classes: The model's classes: 1 (merged defect mask), or C > 1, when probabilities
            are (C, H, W) and ground truth is a class-id mask; the pixel, image and defect
            numbers then score the merged mask (any class), and per-class numbers and the
            competition's metric come on top.
    """

    def __init__(
        self,
        variants: Mapping[str, PostProcess | ClassPostProcess],
        thresholds: Sequence[float] = metric.SWEEP_THRESHOLDS,
        iou_threshold: float = 0.5,
        keep_masks: Sequence[str] = (),
        classes: int = 1,
    ) -> None:
        self.variants = dict(variants)
        self.thresholds = [float(t) for t in thresholds]
        self.iou_threshold = iou_threshold
        self.classes = int(classes)
        self.images: list[dict[str, Any]] = []
        self.masks: dict[str, dict[str, Any]] = {name: {} for name in keep_masks}  # RLEs
        self._curve: list[np.ndarray] = []  # per image (3, T): tp, fp, fn

    def add(
        self,
        image_id: str,
        prob: np.ndarray,
        target: np.ndarray,
        image_prob: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Score one image.

        Shape:
            prob: (H, W), or (C, H, W) with classes; target: (H, W) bool, or class ids with
            classes; image_prob: the gate head's (C,) probabilities, or None.
        """
        many = self.classes > 1
        merged_prob = prob.max(0) if many else prob  # a pixel's most likely class
        if merged_prob.shape != target.shape or (many and len(prob) != self.classes):
            raise ValueError(f"{image_id}: probabilities {prob.shape} vs mask {target.shape}")
        truth = target > 0
        row: dict[str, Any] = {
            "image_id": image_id,
            "gt_pixels": int(truth.sum()),
            "max_prob": float(merged_prob.max()),
        }
        if many:
            row["gt_classes"] = [int((target == c).sum()) for c in range(1, self.classes + 1)]
        for name, pp in self.variants.items():
            pred = apply_postprocess(pp, prob, image_prob)
            merged = pred.any(0) if many else pred
            tp, fp, fn = metric.mask_counts(merged, truth)
            n_true, found, n_pred, matched = metric.defect_counts(merged, truth, self.iou_threshold)
            row[name] = {
                "pred_pixels": tp + fp,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "dice": float(metric.dice_per_image(tp, fp, fn)),  # Kaggle rule
                "defects": [n_true, found, n_pred, matched],
                "small_defects": list(
                    metric.small_defect_counts(merged, truth, iou_threshold=self.iou_threshold)
                ),
            }
            if many:  # (tp, fp, fn) of each class
                row[name]["classes"] = [
                    list(metric.mask_counts(pred[c], target == c + 1)) for c in range(len(pred))
                ]
            if name in self.masks:
                self.masks[name][image_id] = (
                    [rle.encode(m) for m in pred] if many else rle.encode(pred)
                )
        self._curve.append(
            np.stack(metric.counts_at_thresholds(merged_prob, truth, self.thresholds))
        )
        self.images.append(row)
        return row

    def curve(self) -> list[dict[str, float]]:
        """IoU, Dice and per-image Dice at each curve threshold (before area filters)."""
        if not self._curve:
            return []
        c = np.stack(self._curve)  # (N, 3, T)
        return metric.threshold_curve(c[:, 0], c[:, 1], c[:, 2], self.thresholds)

    def summary(self, name: str) -> dict[str, Any]:
        """Pixel, image-level and defect-level metrics of one variant (and per class)."""
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
        n_small, found_small = np.array([r["small_defects"] for r in rows]).reshape(-1, 2).sum(0)
        out = {
            "postprocess": self.variants[name].to_dict(),
            "pixel": metric.pixel_scores(
                *(np.array([r[k] for r in rows]) for k in ("tp", "fp", "fn"))
            ),
            "image": image,
            "defect": {
                "iou_threshold": self.iou_threshold,
                **metric.defect_scores(*defects),
                "small_below": metric.SMALL_DEFECT,  # pixels: small defects' recall
                "small_n_true": int(n_small),
                "small_found": int(found_small),
                "small_recall": float(found_small / n_small) if n_small else math.nan,
            },
        }
        if self.classes > 1:
            counts = np.array([r["classes"] for r in rows], dtype=np.int64)  # (N, C, 3)
            tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
            out["kaggle_dice"] = metric.kaggle_dice(tp, fp, fn)
            out["classes"] = [
                {"class": c + 1, "n_images_with": int((tp[:, c] + fn[:, c] > 0).sum())}
                | metric.pixel_scores(tp[:, c], fp[:, c], fn[:, c])
                for c in range(self.classes)
            ]
        return out


# ----------------------------------------------------------------------------- runtimes
def score_predictor(
    predictor: Predictor,
    sources: Sequence[Source],
    mask_of: prep.MaskReader,
    postprocess: PostProcess | None = None,
    progress: bool | None = False,
    desc: str = "score",
) -> dict[str, Any]:
    """Per-image Dice and pixel IoU of ``predictor`` on labelled images (the runtime checks).

    Returns:
        ``{"runtime", "precision", "n_images", "dice_per_image", "iou", "images_per_s"}``;
        images/s includes reading the files.
    """
    pp = postprocess or predictor.postprocess
    counts = []
    start = time.perf_counter()
    for p in predictor.predict_files(
        sources, check=mask_of.check, on_skip=lambda s, r: None, progress=progress, desc=desc
    ):
        counts.append(metric.mask_counts(p.defect_mask(pp), mask_of(p.source.image_id)))
    seconds = time.perf_counter() - start
    if not counts:
        raise ValueError("none of the labelled images could be read")
    scores = metric.pixel_scores(*(np.array(c, dtype=np.int64) for c in zip(*counts)))
    return {
        "runtime": predictor.runtime,
        "precision": predictor.precision,
        "n_images": len(counts),
        "dice_per_image": float(scores["dice_per_image"]),
        "iou": float(scores["iou"]),
        "images_per_s": round(len(counts) / max(seconds, 1e-9), 3),
    }


def runtime_check(
    reference: Mapping[str, Any], scores: Mapping[str, Any], tolerance: float
) -> dict[str, Any]:
    """``scores`` against the PyTorch fp32 ``reference`` (both from :func:`score_predictor`):
    the per-image Dice drop, and whether it is within ``tolerance``."""
    drop = reference["dice_per_image"] - scores["dice_per_image"]
    return {
        **scores,
        "reference_dice_per_image": reference["dice_per_image"],
        "reference_iou": reference["iou"],
        "dice_drop": drop,
        "iou_drop": reference["iou"] - scores["iou"],
        "tolerance": tolerance,
        "ok": bool(drop <= tolerance),
    }


def reference_predictor(predictor: Predictor) -> Predictor | None:
    """The same model on PyTorch fp32 (with the same post-processing and flips), to check
    ``predictor`` against; None when it is that already, or when PyTorch or the checkpoint
    behind an export is not here (logged)."""
    if (predictor.runtime, predictor.precision) == ("torch", "fp32"):
        return None
    source = predictor.checkpoint
    if source is None or not source.is_file() or not installed("torch"):
        log.warning(
            "no PyTorch fp32 check of %s: %s",
            predictor.describe(),
            "PyTorch is not installed"
            if source and source.is_file()
            else "no checkpoint behind it",
        )
        return None
    return Predictor.from_checkpoint(
        source,
        "cpu",
        postprocess=predictor.postprocess,
        tta=predictor.tta,
        batch_size=predictor.batch_size,
        precision="fp32",
    )


def check_text(row: Mapping[str, Any], split: str) -> str:
    """One line: a runtime's per-image Dice and IoU on ``split`` beside PyTorch fp32's."""
    return (
        f"{row['runtime']} {row['precision']}: per-image Dice {row['dice_per_image']:.4f} vs "
        f"{row['reference_dice_per_image']:.4f} for PyTorch fp32 (drop {row['dice_drop']:+.4f}, "
        f"tolerance {row['tolerance']}), IoU {row['iou']:.4f} vs {row['reference_iou']:.4f} on "
        f"{row['n_images']} {split} images"
    )


# ----------------------------------------------------------------------------- evaluation
def default_out_dir(checkpoint: Path, split: str) -> Path:
    """``<run>/eval/<checkpoint name>-<split>``."""
    return run_folder(checkpoint) / "eval" / f"{checkpoint.stem}-{split}"


def evaluate(
    checkpoint: str | os.PathLike | Predictor,
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
    check_fp32: bool = True,
    tolerance: float = DICE_TOLERANCE,
    load: Callable[[], Predictor] | None = None,
) -> dict[str, Any]:
    """Evaluate a model on a labelled split; write ``eval.json`` and ``report.html``.

    Args:
        checkpoint: A steelseg checkpoint (``.ckpt``, run on PyTorch) or exported file (with
            ``load``), or a :class:`~steelseg.predict.Predictor` (any runtime: see
            :func:`steelseg.deploy.load_predictor`); ``tta``, ``use_tuned``, ``device`` and
            ``batch_size`` then come from it.
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
        check_fp32: When the model runs on another runtime or precision than PyTorch fp32,
            score the split with PyTorch fp32 too (:func:`reference_predictor`); ``eval.json``
            and the report then give both per-image Dice and IoU (``runtime_check``).
        tolerance: The per-image Dice drop below the reference the check accepts.
        load: Builds the predictor once the labelled images are found (a command's
            runtime choice), instead of loading ``checkpoint`` on PyTorch.

    Returns:
        The content of ``eval.json`` (NaN as None).
    """
    predictor = checkpoint if isinstance(checkpoint, Predictor) else None
    checkpoint = Path(predictor.model_file if predictor is not None else checkpoint)
    source = model_checkpoint(checkpoint)
    ids, paths, mask_of = labelled_split(source, split, data_root, split_file)
    out = Path(out) if out is not None else default_out_dir(source, split)
    if predictor is None and load is not None:
        predictor = load()
    if predictor is None:
        predictor = Predictor.from_checkpoint(
            checkpoint, device=device, tta=tta, batch_size=batch_size, use_tuned=use_tuned
        )
    n_classes = predictor.classes
    prep.check_classes(n_classes, mask_of.n_classes, str(mask_of.where))
    post = replaced(predictor.postprocess, **dict(overrides or {}))
    plain = PostProcess(threshold=predictor.model_threshold)
    if n_classes > 1:
        plain = ClassPostProcess.uniform(plain, n_classes)
    scorer = Scorer(
        {"threshold_only": plain, "postprocessed": post},
        iou_threshold=iou_threshold,
        keep_masks=["postprocessed"],  # drawn in the report
        classes=n_classes,
    )

    skipped = Skipped(on_skip)
    start = time.perf_counter()
    sources = [Source(p, i) for i, p in zip(ids, paths)]
    for p in predictor.predict_files(
        sources, check=mask_of.check, on_skip=skipped, progress=progress, desc=f"eval {split}"
    ):
        truth = mask_of(p.source.image_id, classes=n_classes > 1)
        scorer.add(p.source.image_id, p.prob, truth, p.image_prob)
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
            "classes": n_classes,
            "tta": list(predictor.tta),
            "device": str(predictor.device),
            "runtime": predictor.runtime,
            "precision": predictor.precision,
            "model_file": str(checkpoint.resolve()),
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
    reference = reference_predictor(predictor) if check_fp32 else None
    if reference is not None:
        check = runtime_check(
            score_predictor(reference, sources, mask_of, post, progress, f"{split}: fp32 check"),
            {
                "runtime": predictor.runtime,
                "precision": predictor.precision,
                "n_images": result["n_images"],
                "dice_per_image": result["metrics"]["postprocessed"]["pixel"]["dice_per_image"],
                "iou": result["metrics"]["postprocessed"]["pixel"]["iou"],
                "images_per_s": result["images_per_s"],
            },
            tolerance,
        )
        result["runtime_check"] = json_ready(check)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", json.dumps(result, indent=1) + "\n")

    path_of = dict(zip(ids, paths))

    def load_panel(image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, predicted mask, true mask); class-id masks for a multi-class model."""
        image = read_grey(path_of[image_id])
        kept = scorer.masks["postprocessed"][image_id]
        if n_classes == 1:
            return image, rle.decode(kept, image.shape) > 0, mask_of(image_id)
        pred = rle.class_mask(kept, image.shape)
        return image, pred, mask_of(image_id, classes=True)

    report.write_report(result, load_panel, out / "report.html", max_panels, panel_width)
    return result
