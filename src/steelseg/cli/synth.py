"""``steelseg-synth --out DIR [--n-images N] [--seed S] [--n-test T]``: see
:func:`steelseg.synth.generate`."""

from __future__ import annotations

import sys
from pathlib import Path

from steelseg.cli import common

PROG = "steelseg-synth"


def build_parser():
    p = common.parser(
        PROG,
        "Write synthetic steel images with defect masks in the Kaggle Severstal layout "
        "(train_images/, train.csv, test_images/, sample_submission.csv).",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--n-images", type=common.positive_int, default=400, help="train images (default 400)"
    )
    p.add_argument("--seed", type=common.at_least(0), default=0, help="random seed (default 0)")
    p.add_argument(
        "--n-test",
        type=common.at_least(0),
        default=None,
        help="test images (default: n-images // 10, at least 1)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.synth import generate

        out = generate(args.out, args.n_images, args.seed, args.n_test, progress=not args.quiet)
        if not args.quiet:
            print(f"{PROG}: synthetic Severstal-layout data set written to {out}", file=sys.stderr)
        return common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
