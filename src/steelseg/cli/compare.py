"""``steelseg-compare DIR... [--out DIR] [--metric NAME] [--curve KEY]``: see
:mod:`steelseg.compare`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from steelseg.cli import common

PROG = "steelseg-compare"


def build_parser():
    p = common.parser(
        PROG,
        "Compare runs: summary.csv, summary.md and summary.png, one row per run (best first), "
        "from sweep folders or run folders.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="sweep folders or run folders")
    p.add_argument(
        "--out",
        type=Path,
        help="where to write the summary (default: the folder holding every run)",
    )
    p.add_argument("--metric", help="sort by this metric (default: the runs' optimized one)")
    p.add_argument(
        "--curve",
        metavar="KEY",
        help="also write curve.csv, curve.md and curve.png: the metric (and test IoU) against "
        "this swept config key, e.g. data.train_fraction (a learning curve)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.compare import collect, write_curve, write_summary

        table, metric = collect(args.dirs, args.metric)
        if args.out is None:
            dirs = [Path(d).resolve() for d in args.dirs]
            out = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0]
        else:
            out = args.out
        markdown = write_summary(table, metric, out)
        print(markdown, end="")
        print(f"written: {out / 'summary.csv'}, summary.md, summary.png")
        if args.curve:
            print(write_curve(table, args.curve, metric, out), end="")
            print(f"written: {out / 'curve.csv'}, curve.md, curve.png")
        return common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
