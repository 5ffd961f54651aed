"""``steelseg-pseudo CHECKPOINT IMAGES... --out DIR``: see :func:`steelseg.pseudo.pseudo_label`."""

from __future__ import annotations

import sys
from pathlib import Path

from steelseg.cli import common

PROG = "steelseg-pseudo"


def build_parser():
    p = common.parser(
        PROG,
        "Pseudo-label unlabelled images with a steelseg checkpoint: keep the confident ones as "
        "a Kaggle-layout folder (train.csv with ClassId 0 = any class, train_images/) to add "
        "to training with '++data.extra_roots=[DIR]'.",
    )
    common.add_checkpoint(p, exports=True)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or globs")
    p.add_argument("--out", type=Path, required=True, help="output folder (Kaggle layout)")
    k = p.add_argument_group("which images are kept")
    k.add_argument(
        "--low", type=float, default=0.2, help="confidently clean at or below (default 0.2)"
    )
    k.add_argument(
        "--high", type=float, default=0.8, help="confident defect at or above (default 0.8)"
    )
    k.add_argument(
        "--max-uncertain",
        type=float,
        default=0.0,
        help="largest share of pixels between low and high for an image to be kept (default 0)",
    )
    k.add_argument("--copy", action="store_true", help="copy images instead of linking them")
    common.add_prediction(
        p, "post-processing of the kept masks (default: the tuned values, else the model's)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.pseudo import check_settings, pseudo_label

        check_settings(args.out, args.low, args.high, args.max_uncertain)
        predictor = common.predictor(args, PROG)
        summary = pseudo_label(
            predictor,
            args.images,
            args.out,
            args.low,
            args.high,
            args.max_uncertain,
            args.copy,
            progress=False if args.no_progress else None,
        )
        print(
            f"{PROG}: kept {summary['kept']} of {summary['images']} image(s) "
            f"({summary['kept_with_defect']} with a defect) in {args.out}"
            + common.skipped_note(list(summary["skipped"]))
            + f". Train with: '++data.extra_roots=[{args.out}]'"
        )
        return common.SKIPPED if summary["skipped"] else common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
