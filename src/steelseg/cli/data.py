"""``steelseg-data report DIR --out OUT [--split-file FILE]``: see
:func:`steelseg.datareport.report_dataset`."""

from __future__ import annotations

import sys
from pathlib import Path

from steelseg.cli import common

PROG = "steelseg-data"
HASH_THRESHOLD = 8  # steelseg.duplicates.HASH_THRESHOLD, without importing it


def build_parser():
    p = common.parser(
        PROG,
        "Look at a labelled data set before training on it.",
    )
    sub = p.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=common.Parser,
        help="report: the data report (HTML and JSON)",
    )  # fmt: skip
    r = sub.add_parser(
        "report",
        help="the data report",
        description="Write OUT/data_report.html and OUT/data_report.json for a data folder "
        "(Kaggle layout: train.csv + train_images/; folder layout: images/ + masks/): image "
        "sizes, images and defects per class, defect-area histograms, the share without a "
        "defect, masks touching the border, near-duplicate groups (copies, flipped or rotated "
        "copies) and, with --split-file, which groups the split puts on more than one side "
        "and how many val/test images it leaks.",
        epilog=common.EXIT_CODES,
    )
    r.add_argument("data_dir", type=Path, metavar="DIR", help="the labelled data folder")
    r.add_argument("--out", type=Path, required=True, help="output folder")
    r.add_argument(
        "--split-file",
        help="a split to check for leaks: a CSV of ImageId,split (data.split_file), a prepared "
        "split.csv or its folder, or 'reference'",
    )
    r.add_argument(
        "--threshold",
        type=common.at_least(0),
        default=HASH_THRESHOLD,
        help="the largest perceptual-hash distance, in bits of 64, of near-duplicates "
        f"(default {HASH_THRESHOLD})",
    )
    r.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images without a mask and masks without an image, with a warning",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.datareport import HTML_NAME, report_dataset
        from steelseg.io import check_out_folder

        check_out_folder(args.out)
        r = report_dataset(args.data_dir, args.out, args.split_file, args.threshold, args.skip_bad)
        dup = r["duplicates"]
        print(
            f"{PROG}: {r['images']} images, {r['empty']['share']:.1%} without a defect, "
            f"{len(dup['groups'])} near-duplicate group(s) ({dup['images']} images)"
        )
        if r["split"] is not None:
            leaks = r["split"]["leaks"]
            print(
                f"{PROG}: the split leaks {leaks['leaked']} val/test image(s) (a near-duplicate "
                f"in train); {leaks['groups']} group(s), {leaks['images']} images, on more than "
                "one side"
            )
        print(f"{PROG}: wrote {args.out / HTML_NAME}")
        return common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
