"""``steelseg-import SRC --format coco|cvat|labelme|labelstudio|masks --out DIR``: see
:func:`steelseg.labelimport.import_labels`."""

from __future__ import annotations

import sys
from pathlib import Path

from steelseg.cli import common

PROG = "steelseg-import"
FORMATS = ("coco", "cvat", "labelme", "labelstudio", "masks")  # steelseg.labelimport.FORMATS


def build_parser():
    p = common.parser(
        PROG,
        "Write a labelling tool's export as the folder layout: DIR/images/, DIR/masks/<stem>.png "
        "(class id per pixel, 0 = background) and DIR/classes.csv (id, name, colour). Where "
        "instances overlap, the smaller is drawn over the larger. See docs/labels.md.",
    )
    p.add_argument(
        "src",
        type=Path,
        metavar="SRC",
        help="the export: a COCO / Label Studio JSON file, a CVAT XML file, a LabelMe JSON file "
        "or folder of them, or (--format masks) a folder with images/ and masks/",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="coco (also Label Studio's COCO export), cvat (CVAT for images 1.1 XML), labelme, "
        "labelstudio (Label Studio's JSON export), masks (colour or 0/255 masks)",
    )
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.add_argument(
        "--classes",
        metavar="NAME=#RRGGBB,...",
        help="the classes in id order (1, 2, ...), each with its mask colour: required for "
        "--format masks (0/255 masks: defect=#ffffff); for the other formats optional (names "
        "alone are enough): it fixes the ids, and a label it lacks is an error",
    )
    p.add_argument(
        "--images", type=Path, help="the folder holding the images (default: beside SRC)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.labelimport import import_labels, parse_classes

        classes = parse_classes(args.classes) if args.classes else None
        done = import_labels(args.src, args.format, args.out, classes, args.images, args.overwrite)
        names = ", ".join(f"{c} {n} ({done['pixels'][c]} px)" for c, n in done["classes"].items())
        shapes = f", {done['annotations']} annotations" if done["annotations"] is not None else ""
        if done["skipped"]:
            shapes += f" ({done['skipped']} lines or points without area skipped)"
        if done["unlabelled"]:
            shapes += f"; {done['unlabelled']} unlabelled tasks left out"
        print(f"{PROG}: wrote {done['out']}: {done['images']} images{shapes}; classes {names}")
        return common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
