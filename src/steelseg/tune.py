"""``steelseg-tune``: choose the post-processing of a checkpoint on its validation split.

::

    steelseg-tune outputs/train/runs/<time>/checkpoints/best-*.ckpt [--tta]

predicts the validation images once (at full resolution, 256x1600), then scores every
combination of probability threshold x ``min_component_area`` x ``min_total_area`` (and,
with ``--tta``, flip test-time augmentation on and off) by the mean per-image Dice (Kaggle
rule: an empty prediction on a clean image scores 1), prints the best rows and stores the winner
beside the checkpoint (:func:`steelseg.postprocess.save_tuned`), where ``steelseg-predict`` and
``steelseg-eval`` pick it up.

The search is exact and cheap: per image and threshold, the connected components of the mask
are found once; every area pair is then a matrix product over the components' areas and their
overlaps with the ground truth.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from steelseg import metric
from steelseg.coco import CONNECTIVITY
from steelseg.inputs import Skipped, Source, log_skip
from steelseg.labelled import LabelledImages
from steelseg.layouts import check_classes
from steelseg.postprocess import (
    GATES,
    ClassPostProcess,
    PostProcess,
    check_tta,
    gate_probabilities,
    save_tuned,
)
from steelseg.predict import Predictor

log = logging.getLogger(__name__)

#: Default grid. Areas are pixels at full resolution (256x1600 = 409,600 pixels); the top
#: Kaggle solutions removed masks below roughly 600-4000 pixels depending on the class.
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 19))  # 0.10 ... 0.90
MIN_COMPONENT_AREAS = (0, 50, 100, 200, 400, 800, 1600)
MIN_TOTAL_AREAS = (0, 250, 500, 1000, 1500, 2000, 3000, 4000)
#: image probabilities tried as the hard gate's threshold (1st place used 0.6-0.7 per class)
GATE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
TIE = 1e-9  # scores this close count as equal; the simpler setting then wins


@dataclass(frozen=True)
class Grid:
    """The values searched; every combination is scored.

    Args:
        thresholds: Probability thresholds, each in (0, 1).
        min_component_areas: Component sizes (pixels) below which components are dropped.
        min_total_areas: Total mask areas (pixels) below which the mask is emptied.
    """

    thresholds: Sequence[float] = THRESHOLDS
    min_component_areas: Sequence[int] = MIN_COMPONENT_AREAS
    min_total_areas: Sequence[int] = MIN_TOTAL_AREAS

    def __post_init__(self) -> None:
        t = tuple(sorted({float(v) for v in self.thresholds}))
        if not t or t[0] <= 0.0 or t[-1] >= 1.0:
            raise ValueError(f"thresholds must be numbers in (0, 1), got {list(self.thresholds)}")
        object.__setattr__(self, "thresholds", t)
        for name in ("min_component_areas", "min_total_areas"):
            values = getattr(self, name)
            if not values or any(int(v) != v or v < 0 for v in values):
                raise ValueError(f"{name} must be integers >= 0, got {list(values)}")
            object.__setattr__(self, name, tuple(sorted({int(v) for v in values})))

    def including(self, threshold: float) -> Grid:
        """This grid plus the given threshold and the areas 0 (so the plain model is scored)."""
        return Grid(
            (*self.thresholds, threshold),
            (0, *self.min_component_areas),
            (0, *self.min_total_areas),
        )

    def to_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}


class GridScorer:
    """Sums, over images, the per-image Dice and pixel counts at every grid point.

    Args:
        grid: The values to search.
        base: Fixed steps (close, dilate, fill_holes) applied before the area filters; its
            threshold and areas are ignored.
    """

    def __init__(self, grid: Grid, base: PostProcess | None = None) -> None:
        self.grid = grid
        self.base = base or PostProcess()
        self.areas = np.asarray(grid.min_component_areas, dtype=np.int64)  # (A,)
        self.totals = np.asarray(grid.min_total_areas, dtype=np.int64)  # (M,)
        shape = (len(grid.thresholds), len(self.areas), len(self.totals))
        self.dice_sum = np.zeros(shape)
        self.tp, self.fp, self.fn = (np.zeros(shape, dtype=np.int64) for _ in range(3))
        self.n_images = 0

    def _mask(self, prob: np.ndarray, threshold: float) -> np.ndarray:
        if self.base.is_neutral():
            return prob >= threshold
        steps = dataclasses.replace(
            self.base, threshold=threshold, min_component_area=0, min_total_area=0
        )
        return steps.apply(prob)

    def add(self, prob: np.ndarray, target: np.ndarray) -> None:
        """Score one image at every grid point.

        Shape:
            prob: (H, W) probabilities; target: (H, W) bool ground truth.
        """
        target = target.astype(bool)
        gt = int(target.sum())
        for ti, t in enumerate(self.grid.thresholds):
            mask = self._mask(prob, t).astype(np.uint8)
            n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=CONNECTIVITY)
            comp_area = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)  # (K,)
            comp_tp = np.bincount(labels[target], minlength=n)[1:].astype(np.int64)  # (K,)
            keep = comp_area[None, :] >= self.areas[:, None]  # (A, K)
            area = keep @ comp_area  # (A,) predicted pixels after the component filter
            tp = keep @ comp_tp
            empty = area[:, None] < self.totals[None, :]  # (A, M): the total-area filter
            tp = np.where(empty, 0, tp[:, None])
            fp = np.where(empty, 0, area[:, None]) - tp
            fn = gt - tp
            self.dice_sum[ti] += metric.dice_per_image(tp, fp, fn)
            self.tp[ti] += tp
            self.fp[ti] += fp
            self.fn[ti] += fn
        self.n_images += 1

    def rows(self, tta: Sequence[str] = ()) -> list[dict[str, Any]]:
        """One dict per grid point: the settings, ``dice_per_image`` and pixel ``iou``."""
        dice = self.dice_sum / max(self.n_images, 1)
        iou = metric.iou_per_image(self.tp, self.fp, self.fn)  # of each grid point's summed counts
        out = []
        for (ti, ai, mi), d in np.ndenumerate(dice):
            out.append(
                {
                    "threshold": self.grid.thresholds[ti],
                    "min_component_area": int(self.areas[ai]),
                    "min_total_area": int(self.totals[mi]),
                    "tta": list(tta),
                    "dice_per_image": float(d),
                    "iou": float(iou[ti, ai, mi]),
                }
            )
        return out


def rank(rows: Sequence[Mapping[str, Any]], prefer_threshold: float) -> list[Mapping[str, Any]]:
    """Rows best first: highest per-image Dice; among equal scores the simpler setting (no TTA,
    no gate, smaller total and component areas, threshold nearest ``prefer_threshold``)."""

    def key(r: Mapping[str, Any]) -> tuple:
        return (
            -round(r["dice_per_image"] / TIE),
            len(r["tta"]),
            GATES.index(r.get("gate", "none")),
            r["min_total_area"],
            r["min_component_area"],
            abs(r["threshold"] - prefer_threshold),
            abs(r.get("gate_threshold", 0.5) - 0.5),
        )

    return sorted(rows, key=key)


def gate_options(gated: bool) -> list[tuple[str, float]]:
    """The (gate, gate_threshold) pairs tried: no gate, and for a model with the gate head
    the soft gate and the hard gate at each of :data:`GATE_THRESHOLDS`."""
    if not gated:
        return [("none", 0.5)]
    return [("none", 0.5), ("soft", 0.5), *(("hard", t) for t in GATE_THRESHOLDS)]


@dataclass
class TuneResult:
    """What :func:`tune` found."""

    postprocess: PostProcess | ClassPostProcess
    tta: tuple[str, ...]
    score: float  # mean per-image Dice; with classes, the mean over (image, class) pairs
    baseline: float
    n_images: int
    rows: list[Mapping[str, Any]] = field(repr=False)
    sidecar: Path | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable or wrong-size


def tune(
    predictor: Predictor,
    images: LabelledImages,
    split: str = "val",
    grid: Grid | None = None,
    tta: Sequence[str] = (),
    base: PostProcess | None = None,
    save: bool = True,
    progress: bool | None = True,
    on_skip: Callable[[Source, str], None] = log_skip,
) -> TuneResult:
    """Grid-search the post-processing of a model on labelled images (see module doc).

    Args:
        predictor: The model, on any runtime (:func:`steelseg.deploy.load_predictor`); its
            TTA and post-processing are replaced. The winner is stored beside the checkpoint
            or exported file it came from.
        images: The labelled images to tune on (:func:`steelseg.labelled.labelled_split`).
        split: Their split's name, recorded with the result.
        grid: The values searched; the model's own threshold and the areas 0 are always added,
            so the plain model is among the candidates and tuning never scores below it.
        tta: Flips to try beside none (e.g. ``("hflip", "vflip")``); each image is predicted
            once, the plain prediction being part of the flip average.
        base: Fixed close/dilate/fill_holes steps to tune around (default none).
        save: Store the winner beside the model file (:func:`steelseg.postprocess.save_tuned`).
        progress: Show a progress bar (None: on a terminal).
        on_skip: Told each image that cannot be read (or is not its mask's size) and why.
    """
    start = time.perf_counter()
    predictor.tta = tta = check_tta(tta)
    mask_of = images[2]
    check_classes(predictor.classes, mask_of.n_classes, str(mask_of.where))
    grid = (grid or Grid()).including(predictor.model_threshold)
    options = [()] + ([tta] if tta else [])
    skipped = Skipped(on_skip)
    scorers, n_images = _score_grid(
        predictor, images, grid, base, options, skipped, progress, split
    )
    per_option = _best_per_class(scorers, options, predictor)
    result = _choose(per_option, options, predictor, base, n_images)
    result.skipped = skipped.by_id()
    if save:
        info = _sidecar_info(result, per_option, predictor, grid, options, images, split, skipped)
        info["seconds"] = round(time.perf_counter() - start, 2)
        result.sidecar = save_tuned(predictor.model_file, result.postprocess, result.tta, info)
    return result


def _score_grid(
    predictor: Predictor,
    images: LabelledImages,
    grid: Grid,
    base: PostProcess | None,
    options: Sequence[tuple[str, ...]],
    skipped: Skipped,
    progress: bool | None,
    split: str,
) -> tuple[dict[tuple, GridScorer], int]:
    """Predict every image once and score every setting of the grid on it: one scorer per
    (TTA option, class, gate). The competition's metric is a mean over (image, class) pairs,
    so each class's settings can be chosen on their own."""
    ids, paths, mask_of = images
    n_classes, gates = predictor.classes, gate_options(predictor.gated)
    scorers = {
        (t, c, g): GridScorer(grid, base) for t in options for c in range(n_classes) for g in gates
    }
    n_images = 0
    for p in predictor.predict_files(
        [Source(path, i) for i, path in zip(ids, paths)],
        check=mask_of.check,
        on_skip=skipped,
        with_plain=True,
        progress=progress,
        desc=f"tune on {split}",
    ):
        truth = mask_of(p.source.image_id, classes=n_classes > 1)
        outputs = {(): (p.plain, p.plain_image_prob)}
        if len(options) > 1:
            outputs[options[1]] = (p.prob, p.image_prob)
        for t, (prob, iprob) in outputs.items():
            for c in range(n_classes):
                prob_c = prob[c] if n_classes > 1 else prob
                target = truth == c + 1 if n_classes > 1 else truth
                ip = None if iprob is None else float(np.asarray(iprob).reshape(-1)[c])
                for g in gates:
                    scorers[t, c, g].add(gate_probabilities(prob_c, ip, *g), target)
        n_images += 1
    if n_images == 0:
        raise ValueError(f"no image of split {split!r} could be read; see the messages above")
    return scorers, n_images


def _best_per_class(
    scorers: Mapping[tuple, GridScorer], options: Sequence[tuple[str, ...]], predictor: Predictor
) -> dict[tuple[str, ...], list[list[Mapping[str, Any]]]]:
    """For each TTA option, each class's rows ranked best first."""
    gates = gate_options(predictor.gated)
    per_option = {}
    for t in options:
        per_option[t] = [
            rank(
                [
                    {**r, "class": c + 1, "gate": g, "gate_threshold": gt}
                    for g, gt in gates
                    for r in scorers[t, c, (g, gt)].rows(t)
                ],
                predictor.model_threshold,
            )
            for c in range(predictor.classes)
        ]
    return per_option


def _choose(
    per_option: Mapping[tuple[str, ...], list[list[Mapping[str, Any]]]],
    options: Sequence[tuple[str, ...]],
    predictor: Predictor,
    base: PostProcess | None,
    n_images: int,
) -> TuneResult:
    """The TTA option whose classes score best together, with each class's best settings."""
    mean = {t: float(np.mean([r[0]["dice_per_image"] for r in b])) for t, b in per_option.items()}
    chosen_tta = min(options, key=lambda t: (-round(mean[t] / TIE), len(t)))
    by_class = per_option[chosen_tta]
    settings = [
        dataclasses.replace(
            base or PostProcess(),
            threshold=rows[0]["threshold"],
            min_component_area=rows[0]["min_component_area"],
            min_total_area=rows[0]["min_total_area"],
            gate=rows[0]["gate"],
            gate_threshold=rows[0]["gate_threshold"],
        )
        for rows in by_class
    ]
    chosen = settings[0] if predictor.classes == 1 else ClassPostProcess(tuple(settings))
    rows = rank([r for t in options for b in per_option[t] for r in b], predictor.model_threshold)
    baseline = _plain_score(per_option[()], predictor.model_threshold)
    return TuneResult(chosen, chosen_tta, mean[chosen_tta], baseline, n_images, rows)


def _plain_score(by_class: Sequence[Sequence[Mapping[str, Any]]], threshold: float) -> float:
    """The plain model's score: no TTA, no gate, its own threshold, no area filter."""
    return float(
        np.mean(
            [
                next(
                    r["dice_per_image"]
                    for r in rows
                    if not r["tta"]
                    and r["gate"] == "none"
                    and r["threshold"] == threshold
                    and r["min_component_area"] == 0
                    and r["min_total_area"] == 0
                )
                for rows in by_class
            ]
        )
    )


def _sidecar_info(
    result: TuneResult,
    per_option: Mapping[tuple[str, ...], list[list[Mapping[str, Any]]]],
    predictor: Predictor,
    grid: Grid,
    options: Sequence[tuple[str, ...]],
    images: LabelledImages,
    split: str,
    skipped: Skipped,
) -> dict[str, Any]:
    """What the tuned sidecar records beside the values: the score, the baseline, what the
    values were tuned on and the grid."""
    by_class = per_option[result.tta]
    if predictor.classes == 1:
        best = by_class[0][0]
    else:
        best = {
            "dice_per_image": result.score,
            "iou": float(np.mean([b[0]["iou"] for b in by_class])),
        }
    ids, paths, mask_of = images
    return {
        "metric": "dice_per_image" if predictor.classes == 1 else "kaggle_dice",
        "runtime": f"{predictor.runtime} {predictor.precision}",
        "score": best["dice_per_image"],
        "iou": best["iou"],
        "baseline": {"threshold": predictor.model_threshold, "dice_per_image": result.baseline},
        "tuned_on": {
            "split": split,
            "n_images": result.n_images,
            "skipped": [s.image_id for s, _ in skipped],
            "data_root": str(paths[0].parent.parent.resolve()),
            "split_file": str(mask_of.where),
        },
        "grid": {**grid.to_dict(), "tta": [list(t) for t in options]},
        "tuned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
