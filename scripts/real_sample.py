"""Score checkpoints on real Severstal strips kept outside the project.

The real images are Kaggle's and stay where they are. For each checkpoint:

- **labelled**: the script links the labelled images into a temporary Kaggle-layout folder
  (``train_images/`` + ``train.csv``), runs ``steelseg.evaluate.evaluate`` on every image there
  (``split="all"``) and deletes the folder: per-image Dice, pixel IoU, defect recall, and each
  image's Dice beside its true classes (which kinds of real defect the model finds);
- **unlabelled** (``SAMPLE/test_images``, when there): with no ground truth, the share of strips
  the model flags (any defect pixel after its post-processing) and the predicted defect area per
  strip, to set beside the 47% of Kaggle's train strips that are clean (53% defective).

- **synthetic classes** (``--synthetic-classes N``, default 12): which defect kinds the model
  learned at all. N synthetic strips with one class each (seeded, the current generator): the
  mean probability inside the masks and the Dice, per class. A class the model misses here it
  cannot find on real steel either.

Nothing is copied into the project.

    python scripts/real_sample.py CKPT [...] [--sample ../shared/severstal_sample]

``--sample`` is a folder holding ``images/`` (the JPEGs) and ``sample_masks.csv`` (their masks
in either train.csv layout), or a Kaggle-layout folder (``train_images/`` + ``train.csv``), and
optionally ``test_images/`` (unlabelled strips).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from steelseg import metric, rle, synth
from steelseg.evaluate import evaluate
from steelseg.inputs import collect_inputs
from steelseg.labelled import labelled_images
from steelseg.postprocess import apply_postprocess
from steelseg.predict import Predictor

KAGGLE_DEFECTIVE = 1 - 5902 / 12568  # share of Kaggle's train strips with a defect


def kaggle_view(sample: Path, into: Path) -> Path:
    """A Kaggle-layout folder of symbolic links to ``sample``'s images and masks."""
    if (sample / "train_images").is_dir():
        return sample
    images, masks = sample / "images", sample / "sample_masks.csv"
    if not images.is_dir() or not masks.is_file():
        raise SystemExit(
            f"{sample} holds neither train_images/ + train.csv nor images/ + {masks.name}"
        )
    (into / "train_images").mkdir(parents=True)
    for image in sorted(images.iterdir()):
        (into / "train_images" / image.name).symlink_to(image.resolve())
    (into / "train.csv").symlink_to(masks.resolve())
    return into


def flagged(predictor: Predictor, strips: Path) -> tuple[int, int, float, float]:
    """(strips, flagged strips, mean predicted defect area per strip in px, median over the
    flagged ones) on unlabelled strips, with the predictor's own post-processing."""
    areas = [
        int(p.defect_mask(predictor.postprocess).sum())
        for p in predictor.predict_files(collect_inputs([strips])[0])
    ]
    hit = [a for a in areas if a]
    return len(areas), len(hit), float(np.mean(areas)), float(np.median(hit)) if hit else 0.0


def synthetic_classes(predictor: Predictor, n: int) -> list[tuple[int, float, float]]:
    """(class, mean probability inside the masks, Dice at the predictor's post-processing)
    over ``n`` synthetic strips with that class alone (seeded: the same strips every run)."""
    rows = []
    for cls in range(1, 5):
        inside, dice = [], []
        for i in range(n):
            image, masks = synth.make_image(np.random.default_rng([cls, i]), classes=(cls,))
            if cls not in masks:
                continue
            prob, image_prob = predictor.predict_proba(image, return_image_prob=True)
            pred = apply_postprocess(predictor.postprocess, prob, image_prob)  # as predict() does
            if prob.ndim == 3:  # several classes: any class counts
                prob, pred = prob.max(0), pred.any(0)
            truth = masks[cls] > 0
            inside.append(float(prob[truth].mean()))
            dice.append(float(metric.dice_per_image(*metric.mask_counts(pred, truth))))
        rows.append((cls, float(np.mean(inside)), float(np.mean(dice))))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, help="checkpoints (.ckpt)")
    p.add_argument("--sample", type=Path, default=Path("../shared/severstal_sample"))
    p.add_argument(
        "--synthetic-classes",
        type=int,
        default=12,
        metavar="N",
        help="synthetic strips per defect class for the per-class check (0: skip)",
    )
    a = p.parse_args()
    rows, per_image = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = kaggle_view(a.sample, Path(tmp) / "data")
        truth = rle.read_annotations(root / "train.csv").groupby("ImageId")["ClassId"]
        true_classes = {i: " ".join(map(str, sorted(c))) for i, c in truth}
        for model in a.models:
            out = Path(tmp) / "eval" / f"{len(rows)}"
            images = labelled_images(root)  # every labelled image, nothing prepared
            r = evaluate(Predictor.from_checkpoint(model), images, "all", out, progress=False)
            per_image += [
                (str(model), true_classes.get(i["image_id"], "-"), i) for i in r["images"]
            ]
            for variant in ("threshold_only", "postprocessed"):
                m = r["metrics"][variant]
                rows.append(
                    (
                        str(model),
                        variant,
                        r["n_images"],
                        m["pixel"]["dice_per_image"],
                        m["pixel"]["iou"],
                        m["defect"]["recall"],
                        m.get("kaggle_dice"),
                        " ".join(f"{c['dice_per_image']:.2f}" for c in m.get("classes", [])),
                    )
                )
    strips = a.sample / "test_images"
    if strips.is_dir():
        print(
            "| model | strips | flagged | share flagged | mean area/strip px | median area/flagged |"
        )
        print("|---|---|---|---|---|---|")
        for model in a.models:
            n, hit, mean, median = flagged(Predictor.from_checkpoint(model), strips)
            print(f"| {model} | {n} | {hit} | {hit / n:.2f} | {mean:.0f} | {median:.0f} |")
        print(f"(Kaggle's train strips: {KAGGLE_DEFECTIVE:.2f} defective)\n")
    if a.synthetic_classes:
        print("| model | class | mean probability inside the masks | Dice |")
        print("|---|---|---|---|")
        for model in a.models:
            for cls, inside, dice in synthetic_classes(
                Predictor.from_checkpoint(model), a.synthetic_classes
            ):
                print(f"| {model} | {cls} | {inside:.3f} | {dice:.3f} |")
        print(f"({a.synthetic_classes} synthetic strips per class, one class each)\n")
    print(
        "| model | post-processing | images | Dice/img | IoU | defect recall | Kaggle | "
        "Dice/img per class 1-4 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model, variant, n, d, iou, rec, kag, per in rows:
        kag = "" if kag is None else f"{kag:.4f}"
        print(f"| {model} | {variant} | {n} | {d:.4f} | {iou:.4f} | {rec:.3f} | {kag} | {per} |")

    print("\n| model | image | true classes | true px | predicted px | Dice | defects found |")
    print("|---|---|---|---|---|---|---|")
    for model, classes, i in per_image:
        m = i["postprocessed"]
        n_true, found = m["defects"][:2]
        print(
            f"| {model} | {i['image_id']} | {classes} | {i['gt_pixels']} | {m['pred_pixels']} "
            f"| {m['dice']:.3f} | {found} of {n_true} |"
        )


if __name__ == "__main__":
    main()
