"""``steelseg-synth --out DIR [--n-images N] [--seed S] [--n-test T]``: see
:func:`steelseg.synth.generate`; with ``--compare-to REAL``, also the realism report of the
data set against real strips (:func:`steelseg.realism.compare`)."""

from __future__ import annotations

import sys
from pathlib import Path

from steelseg.cli import common

PROG = "steelseg-synth"
N_IMAGES = 400  # steelseg.synth.N_IMAGES, without importing it


def build_parser():
    p = common.parser(
        PROG,
        "Write synthetic steel images with defect masks in the Kaggle Severstal layout "
        "(train_images/, train.csv, test_images/, sample_submission.csv).",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--n-images", type=common.positive_int, help=f"train images (default {N_IMAGES})"
    )
    p.add_argument("--seed", type=common.at_least(0), help="random seed (default 0)")
    p.add_argument(
        "--n-test",
        type=common.at_least(0),
        default=None,
        help="test images (default: n-images // 10, at least 1)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("realism report (see docs/realism.md)")
    g.add_argument(
        "--compare-to",
        type=Path,
        metavar="REAL",
        help="a folder of real strips (.jpg/.png): set the synthetic images of --out against "
        "them and write realism.json and realism.html; a data set already in --out is used as "
        "it is unless --n-images, --n-test or --seed ask for another",
    )
    g.add_argument(
        "--real-labels",
        type=Path,
        metavar="CSV",
        help="the real strips' labels, for the defect areas per class: a Kaggle train.csv "
        "(either layout) or an index CSV with image_id and area_class_1..4 (default: areas "
        "not measured)",
    )
    g.add_argument(
        "--report-dir",
        type=Path,
        metavar="DIR",
        help="where the report goes (default: OUT/realism)",
    )
    g.add_argument(
        "--baseline",
        type=Path,
        metavar="JSON",
        help="a previous realism.json: its distances are shown as 'before', with the change",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    report_options = {
        "--real-labels": args.real_labels,
        "--report-dir": args.report_dir,
        "--baseline": args.baseline,
    }
    given = [option for option, value in report_options.items() if value is not None]
    if given and args.compare_to is None:
        parser.error(f"{', '.join(given)} needs --compare-to REAL")

    def body() -> int:
        from steelseg import synth

        if args.compare_to is not None:  # a bad folder, file or baseline: nothing is made
            from steelseg import realism

            realism.check_inputs(args.compare_to, args.real_labels, args.baseline, args.report_dir)
            # the set already in --out is compared as it is, unless other sizes are asked for
            out, reused = synth.reuse_or_generate(
                args.out, args.n_images, args.seed, args.n_test, progress=not args.quiet
            )
        else:
            n_images = N_IMAGES if args.n_images is None else args.n_images
            out = synth.generate(args.out, n_images, args.seed or 0, args.n_test, not args.quiet)
            reused = False
        if not args.quiet:
            done = (
                "comparing the data set in"
                if reused
                else "synthetic Severstal-layout data set written to"
            )
            print(f"{PROG}: {done} {out}", file=sys.stderr)
        if args.compare_to is not None:
            report_dir = args.report_dir or out / "realism"
            result = realism.compare(
                out, args.compare_to, report_dir, args.real_labels, baseline=args.baseline
            )
            print(realism.format_table(result))
            if not args.quiet:
                page = report_dir / realism.REPORT_HTML
                print(f"{PROG}: realism report written to {page}", file=sys.stderr)
        return common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
