"""Score checkpoints on a few real labelled Severstal images kept outside the project.

The real images are Kaggle's and stay where they are: this script links them into a temporary
Kaggle-layout folder (``train_images/`` + ``train.csv``), runs ``steelseg.evaluate.evaluate``
on every image there (``split="all"``) for each checkpoint, prints one table and deletes the
folder. Nothing is copied into the project.

    python scripts/real_sample.py CKPT [...] [--sample ../shared/severstal_sample]

``--sample`` is a folder holding ``images/`` (the JPEGs) and ``sample_masks.csv`` (their masks
in either train.csv layout), or a Kaggle-layout folder (``train_images/`` + ``train.csv``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from steelseg.evaluate import evaluate
from steelseg.labelled import labelled_images
from steelseg.predict import Predictor


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, help="checkpoints (.ckpt)")
    p.add_argument("--sample", type=Path, default=Path("../shared/severstal_sample"))
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = kaggle_view(a.sample, Path(tmp) / "data")
        for model in a.models:
            out = Path(tmp) / "eval" / f"{len(rows)}"
            images = labelled_images(root)  # every labelled image, nothing prepared
            r = evaluate(Predictor.from_checkpoint(model), images, "all", out, progress=False)
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
    print(
        "| model | post-processing | images | Dice/img | IoU | defect recall | Kaggle | "
        "Dice/img per class 1-4 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model, variant, n, d, iou, rec, kag, per in rows:
        kag = "" if kag is None else f"{kag:.4f}"
        print(f"| {model} | {variant} | {n} | {d:.4f} | {iou:.4f} | {rec:.3f} | {kag} | {per} |")


if __name__ == "__main__":
    main()
