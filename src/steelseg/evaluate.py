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

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from steelseg import metric, rle
from steelseg.postprocess import PostProcess, add_cli_args, cli_overrides, parse_tta
from steelseg.prepare import SPLITS, atomic_write_text

log = logging.getLogger(__name__)

SPLIT_CHOICES = (*SPLITS, "all")
#: Thresholds of the threshold curve (the metrics at each, before any area filter).
CURVE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
VARIANTS = ("threshold_only", "postprocessed")


# ----------------------------------------------------------------------------- labelled split
def find_run_dir(checkpoint_or_run: str | os.PathLike) -> Path:
    """The training run folder of a checkpoint (``<run>/checkpoints/x.ckpt``) or a run folder."""
    path = Path(checkpoint_or_run)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint or run folder {path} does not exist")
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


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
    """Where the run's data module keeps split.csv (its prepared_dir, or the default one)."""
    if data.get("prepared_dir"):
        return Path(data["prepared_dir"]) / "split.csv"
    from steelseg.dataset import SteelDataModule

    kwargs = {k: v for k, v in data.items() if not k.startswith("_")}
    kwargs.update(root=str(root), synthetic=None)
    return SteelDataModule(**kwargs).prepared_dir / "split.csv"


def labelled_split(
    checkpoint_or_run: str | os.PathLike,
    split: str = "val",
    data_root: str | os.PathLike | None = None,
    split_file: str | os.PathLike | None = None,
) -> tuple[list[str], list[Path], Callable[[str], np.ndarray]]:
    """Images and full-resolution masks of one split of the data a model was trained on.

    The data folder and the prepared ``split.csv`` come from the run's ``config.yaml`` (the
    checkpoint lives in ``<run>/checkpoints/``) unless given.

    Args:
        checkpoint_or_run: A checkpoint inside a run folder, or the run folder.
        split: ``train``, ``val``, ``test`` or ``all``.
        data_root: Kaggle-layout folder holding ``train_images/`` (default: the run's
            ``data.root``).
        split_file: A prepared ``split.csv`` (``ImageId, split, EncodedPixels``; see
            ``steelseg-prepare``) to use instead of the run's.

    Returns:
        ``(image_ids, image_paths, mask_of)``; ``mask_of(image_id)`` is the merged defect mask,
        bool (256, 1600).

    Raises:
        FileNotFoundError: the run, data folder or split file is missing.
        ValueError: unknown split, malformed split file, or an empty split.
    """
    if split not in SPLIT_CHOICES:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLIT_CHOICES)}")
    run = find_run_dir(checkpoint_or_run)
    data = _run_data_config(run)
    if data_root is None and data is None:
        raise FileNotFoundError(
            f"{run} has no config.yaml (is the checkpoint inside a steelseg-train run folder?); "
            "pass --data-root and --split-file"
        )
    root = Path(data_root if data_root is not None else data["root"])
    if not (root / "train_images").is_dir():
        raise FileNotFoundError(
            f"data folder {root} has no train_images/; pass --data-root with the Kaggle-layout "
            "folder the model was trained on"
        )
    if split_file is not None:
        csv = Path(split_file)
    elif data is not None:
        csv = _prepared_split_csv(data, root)
    else:
        raise FileNotFoundError(
            f"{run} has no config.yaml to find the prepared split in; pass --split-file"
        )
    if not csv.is_file():
        raise FileNotFoundError(
            f"split file {csv} does not exist; pass --split-file (a split.csv written by "
            "steelseg-prepare or steelseg-train)"
        )
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = {"ImageId", "split", "EncodedPixels"} - set(rows.columns)
    if missing:
        raise ValueError(f"{csv} lacks columns {sorted(missing)}; expected a steelseg split.csv")
    if split != "all":
        rows = rows[rows["split"] == split]
    if rows.empty:
        raise ValueError(f"split {split!r} of {csv} holds no images")
    ids = rows["ImageId"].tolist()
    encoded = dict(zip(ids, rows["EncodedPixels"]))

    def mask_of(image_id: str) -> np.ndarray:
        return rle.decode(encoded[image_id], rle.SHAPE, where=f"{csv.name} ({image_id})") > 0

    return ids, [root / "train_images" / i for i in ids], mask_of


# ----------------------------------------------------------------------------- scoring
def _f(v: Any) -> float:
    return float(v) if not isinstance(v, torch.Tensor) else float(v.item())


def pixel_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, float]:
    """Dataset-level IoU / Dice and mean per-image Dice (Kaggle rule) from per-image counts."""
    t, p, n = (torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in (tp, fp, fn))
    return {
        "iou": _f(metric.iou(t, p, n)),
        "dice": _f(metric.dice(t, p, n)),
        "dice_per_image": _f(metric.dice_per_image(t, p, n).float().mean()) if len(t) else math.nan,
        "tp": int(t.sum()),
        "fp": int(p.sum()),
        "fn": int(n.sum()),
    }


def counts_at_thresholds(
    prob: np.ndarray, target: np.ndarray, thresholds: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tp, fp, fn of one image at every threshold (``prob >= t``), from two histograms.

    Returns:
        Three int64 arrays of ``len(thresholds)`` (thresholds must be increasing).
    """
    t = np.asarray(thresholds, dtype=np.float64)
    if np.any(np.diff(t) <= 0):
        raise ValueError(f"thresholds must be increasing, got {list(thresholds)}")
    idx = np.searchsorted(t, prob.ravel(), side="right")  # how many thresholds each pixel passes
    target = target.ravel().astype(bool)
    ge_all = np.cumsum(np.bincount(idx, minlength=len(t) + 1)[::-1])[::-1][1:]
    tp = np.cumsum(np.bincount(idx[target], minlength=len(t) + 1)[::-1])[::-1][1:]
    return tp, ge_all - tp, int(target.sum()) - tp


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
        thresholds: Sequence[float] = CURVE_THRESHOLDS,
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
            tp = int(np.count_nonzero(pred & target))
            fp = int(np.count_nonzero(pred)) - tp
            fn = row["gt_pixels"] - tp
            n_true, found, n_pred, matched = metric.defect_counts(pred, target, self.iou_threshold)
            row[name] = {
                "pred_pixels": tp + fp,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,  # Kaggle rule
                "defects": [n_true, found, n_pred, matched],
            }
            if name in self.masks:
                self.masks[name][image_id] = rle.encode(pred)
        self._curve.append(np.stack(counts_at_thresholds(prob, target, self.thresholds)))
        self.images.append(row)
        return row

    def curve(self) -> list[dict[str, float]]:
        """IoU, Dice and per-image Dice at each curve threshold (before area filters)."""
        if not self._curve:
            return []
        c = np.stack(self._curve)  # (N, 3, T)
        return [
            {"threshold": t, **_drop_counts(pixel_scores(c[:, 0, i], c[:, 1, i], c[:, 2, i]))}
            for i, t in enumerate(self.thresholds)
        ]

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
            "pixel": pixel_scores(*(np.array([r[k] for r in rows]) for k in ("tp", "fp", "fn"))),
            "image": image,
            "defect": {"iou_threshold": self.iou_threshold, **metric.defect_scores(*defects)},
        }


def _drop_counts(scores: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in scores.items() if k not in ("tp", "fp", "fn")}


def json_ready(value: Any) -> Any:
    """Replace NaN/inf with None (strict JSON) and numpy scalars with Python ones."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# ----------------------------------------------------------------------------- evaluation
def read_batches(
    paths: Sequence[Path], ids: Sequence[str], batch_size: int, skipped: list[dict[str, str]]
) -> Iterable[tuple[list[str], list[np.ndarray]]]:
    """Full-size grey images in batches; unreadable or wrong-size ones are logged and skipped."""
    from steelseg.predict import read_grey

    batch_ids: list[str] = []
    images: list[np.ndarray] = []
    for iid, path in zip(ids, paths):
        try:
            img = read_grey(path)
            if img.shape != rle.SHAPE:
                raise ValueError(
                    f"{path} is {img.shape[1]}x{img.shape[0]}, but its mask is "
                    f"{rle.SHAPE[1]}x{rle.SHAPE[0]}"
                )
        except (ValueError, FileNotFoundError) as e:
            log.warning("skipping %s: %s", iid, e)
            skipped.append({"image_id": iid, "reason": str(e)})
            continue
        batch_ids.append(iid)
        images.append(img)
        if len(images) == batch_size:
            yield batch_ids, images
            batch_ids, images = [], []
    if images:
        yield batch_ids, images


def default_out_dir(checkpoint: Path, split: str) -> Path:
    """``<run>/eval/<checkpoint name>-<split>``."""
    return find_run_dir(checkpoint) / "eval" / f"{checkpoint.stem}-{split}"


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
    progress: bool = True,
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
        progress: Show a progress bar.

    Returns:
        The content of ``eval.json`` (NaN as None).
    """
    from tqdm import tqdm

    from steelseg import report
    from steelseg.postprocess import load_tuned, sidecar_path
    from steelseg.predict import Predictor, read_grey

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids, paths, mask_of = labelled_split(checkpoint, split, data_root, split_file)
    out = Path(out) if out is not None else default_out_dir(checkpoint, split)
    tuned = load_tuned(checkpoint) if use_tuned else None  # validates the sidecar early
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

    skipped: list[dict[str, str]] = []
    start = time.perf_counter()
    with tqdm(total=len(ids), desc=f"eval {split}", unit="img", disable=not progress) as bar:
        for batch_ids, images in read_batches(paths, ids, batch_size, skipped):
            probs = predictor.predict_proba(images)  # (N, 256, 1600) float32
            for iid, prob in zip(batch_ids, probs):
                scorer.add(iid, prob, mask_of(iid))
            bar.update(len(batch_ids))
    seconds = time.perf_counter() - start
    if not scorer.images:
        raise ValueError(f"no image of split {split!r} could be read; see the warnings above")

    result = json_ready(
        {
            "checkpoint": str(checkpoint.resolve()),
            "split": split,
            "data_root": str(paths[0].parent.parent.resolve()),
            "n_images": len(scorer.images),
            "n_defective": sum(r["gt_pixels"] > 0 for r in scorer.images),
            "tta": list(predictor.tta),
            "device": str(predictor.device),
            "tuned_sidecar": str(sidecar_path(checkpoint)) if tuned is not None else None,
            "overrides": dict(overrides or {}),
            "seconds": round(seconds, 2),
            "images_per_s": round(len(scorer.images) / max(seconds, 1e-9), 3),
            "metrics": {name: scorer.summary(name) for name in VARIANTS},
            "threshold_curve": scorer.curve(),
            "images": scorer.images,
            "skipped": skipped,
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


# ----------------------------------------------------------------------------- CLI
def _tta_arg(text: str | None) -> tuple[str, ...] | None:
    """``--tta``: the bare flag means both flips; absent: None (the tuned value)."""
    return None if text is None else parse_tta(text)


def main(argv: list[str] | None = None) -> int:
    """``steelseg-eval``: see the module docstring."""
    p = argparse.ArgumentParser(
        prog="steelseg-eval",
        description="Evaluate a checkpoint on a labelled split; write eval.json and report.html.",
    )
    p.add_argument("checkpoint", type=Path, help="a .ckpt written by steelseg-train")
    p.add_argument("--split", default="test", help=f"one of {', '.join(SPLIT_CHOICES)}")
    p.add_argument("--data-root", type=Path, help="Kaggle-layout data folder (default: the run's)")
    p.add_argument("--split-file", type=Path, help="a prepared split.csv (default: the run's)")
    p.add_argument("--out", type=Path, help="output folder (default <run>/eval/<ckpt>-<split>)")
    p.add_argument(
        "--tta",
        nargs="?",
        const="hflip,vflip",
        metavar="FLIPS",
        help="test-time flips, comma-separated from hflip, vflip, or none (--tta alone: both); "
        "default: the tuned ones",
    )
    p.add_argument(
        "--no-tuned",
        action="store_true",
        help="ignore the tuned post-processing stored beside the checkpoint",
    )
    add_cli_args(p, "post-processing (overrides the tuned or default values)")
    p.add_argument("--iou-threshold", type=float, default=0.5, help="defect-level match IoU")
    p.add_argument("--panels", type=int, default=50, help="per-image panels in the report")
    p.add_argument("--panel-width", type=int, default=800, help="panel picture width (pixels)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: a GPU when present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.panels < 0 or args.panel_width < 16:
            raise ValueError("--panels must be >= 0 and --panel-width >= 16")
        result = evaluate(
            args.checkpoint,
            split=args.split,
            data_root=args.data_root,
            split_file=args.split_file,
            out=args.out,
            tta=_tta_arg(args.tta),
            overrides=cli_overrides(args),
            use_tuned=not args.no_tuned,
            device=args.device,
            batch_size=args.batch_size,
            iou_threshold=args.iou_threshold,
            max_panels=args.panels,
            panel_width=args.panel_width,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"steelseg-eval: error: {e}", file=sys.stderr)
        return 2
    print_summary(result)
    out = args.out or default_out_dir(args.checkpoint, args.split)
    print(f"wrote {out / 'eval.json'} and {out / 'report.html'}")
    if result["skipped"]:
        print(f"steelseg-eval: {len(result['skipped'])} image(s) skipped", file=sys.stderr)
        return 1
    return 0


def print_summary(result: Mapping[str, Any]) -> None:
    """The headline numbers of both variants, one table."""
    rows = [
        ("pixel IoU", "pixel", "iou"),
        ("pixel Dice", "pixel", "dice"),
        ("per-image Dice (Kaggle)", "pixel", "dice_per_image"),
        ("image precision", "image", "precision"),
        ("image recall", "image", "recall"),
        ("image ROC AUC (max prob)", "image", "roc_auc_max_prob"),
        ("defect recall", "defect", "recall"),
        ("defect precision", "defect", "precision"),
    ]
    m = result["metrics"]
    print(f"{result['split']}: {result['n_images']} images ({result['n_defective']} defective)")
    print(f"{'':26s} {'threshold only':>15s} {'post-processed':>15s}")
    for label, group, key in rows:
        vals = [m[v][group][key] for v in VARIANTS]
        print(f"{label:26s} " + " ".join(f"{_fmt(v):>15s}" for v in vals))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


if __name__ == "__main__":
    sys.exit(main())
