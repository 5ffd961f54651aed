"""``steelseg-prepare --data-dir DIR --out OUT [...]``: see :func:`steelseg.prepare.prepare`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steelseg.cli import common

PROG = "steelseg-prepare"


def n_images(text: str) -> int | None:
    """argparse type: a positive integer or ``all`` (None)."""
    return None if text == "all" else common.positive_int(text)


def size(text: str) -> tuple[int, int]:
    """argparse type: ``HEIGHTxWIDTH``."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        h = w = 0
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH, e.g. 256x416, got {text!r}")
    return h, w


def build_parser():
    p = common.parser(
        PROG,
        "Select and split a labelled folder (Kaggle layout: train.csv + train_images/; folder "
        "layout: images/ + masks/) into OUT/split.csv and OUT/prepare.json (and, with --cache, "
        "decoded uint8 images and masks).",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="folder with train.csv and train_images/ (Kaggle layout), or with images/ and "
        "masks/ (one PNG per image, same stem, pixel value = class id, 0 = background, or "
        "binary 0/255)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--n-images", type=n_images, default=1000, help="images to use, or 'all' (default 1000)"
    )
    p.add_argument(
        "--split",
        help="train,val,test as counts (800,100,100) or fractions (default 0.8,0.1,0.1; with "
        "--only-defective 0.9,0,0.1: val is --val-fraction of train)",
    )
    p.add_argument("--seed", type=int, default=42, help="seed of selection and split (default 42)")
    p.add_argument(
        "--only-defective",
        action="store_true",
        help="the reference task's protocol: defective images only, test by class count",
    )
    p.add_argument(
        "--split-file",
        help="CSV of ImageId,split reproducing a published split, or 'reference' for the "
        "reference task's 900/100 split shipped with steelseg",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of train used as validation when the split has none (default 0.1)",
    )
    p.add_argument(
        "--cache",
        type=size,
        metavar="HxW",
        help="also store decoded uint8 images and masks resized to HxW (e.g. 256x416)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="drop missing/unreadable images (and, in the folder layout, images without a mask "
        "and masks without an image) with a warning instead of failing",
    )
    p.add_argument(
        "--n-classes",
        type=common.positive_int,
        default=1,
        help="folder layout: the classes its masks hold (values 1..N; default 1, binary masks: "
        "0/1 or 0/255); "
        "unused by the Kaggle layout",
    )
    p.add_argument(
        "--group-split",
        action="store_true",
        help="keep each group of near-duplicate images (copies, flipped or rotated copies) on "
        "one side of the split (data.group_split=true; see steelseg-data report)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        import logging

        from steelseg.prepare import SPLITS, complete_split, prepare

        logging.getLogger("steelseg").setLevel(logging.INFO)  # says what it prepares
        path = prepare(
            args.data_dir,
            args.out,
            n_images=args.n_images,
            split=args.split,
            seed=args.seed,
            only_defective=args.only_defective,
            split_file=args.split_file,
            val_fraction=args.val_fraction,
            skip_bad=args.skip_bad,
            cache_size=args.cache,
            n_classes=args.n_classes,
            group_split=args.group_split,
        )
        counts = complete_split(path.parent)["counts"]
        print(f"{PROG}: wrote {path}: " + ", ".join(f"{s} {counts[s]}" for s in SPLITS))
        return common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
