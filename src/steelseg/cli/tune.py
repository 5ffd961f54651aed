"""``steelseg-tune CHECKPOINT``: see :func:`steelseg.tune.tune`."""

from __future__ import annotations

import argparse
import sys

from steelseg.cli import common

PROG = "steelseg-tune"


def build_parser():
    p = common.parser(
        PROG,
        "Grid-search the probability threshold and the minimum component and total areas on a "
        "labelled split (maximising per-image Dice, Kaggle rule) and store the best beside the "
        "checkpoint, where steelseg-predict, -eval, -pseudo and -export pick them up.",
    )
    common.add_checkpoint(p, exports=True)
    common.add_data(p, "val")
    g = p.add_argument_group("grid")
    g.add_argument(
        "--thresholds",
        type=common.comma_list(float),
        help="comma-separated probability thresholds (default 0.10,0.15,...,0.90)",
    )
    g.add_argument(
        "--min-component-areas",
        type=common.comma_list(int),
        help="comma-separated component sizes in pixels (default 0,50,100,200,400,800,1600)",
    )
    g.add_argument(
        "--min-total-areas",
        type=common.comma_list(int),
        help="comma-separated total mask areas in pixels (default 0,250,500,1000,1500,2000,3000,4000)",
    )
    common.add_tta(g, "none: only the plain prediction is scored; with flips, both are")
    g.add_argument(
        "--try-tta",
        action="store_const",
        const=("hflip", "vflip"),
        dest="tta",
        help=argparse.SUPPRESS,
    )  # the old spelling of --tta
    f = p.add_argument_group("fixed steps applied before the area filters")
    f.add_argument("--dilate", type=int, default=0, help="dilation kernel in pixels (0 = off)")
    f.add_argument("--close", type=int, default=0, help="closing kernel in pixels (0 = off)")
    f.add_argument("--fill-holes", action="store_true", help="fill holes inside defects")
    o = p.add_argument_group("output")
    o.add_argument("--top", type=common.at_least(0), default=10, help="rows to print (default 10)")
    o.add_argument("--no-save", action="store_true", help="print only; write no sidecar")
    common.add_runtime(p)
    return p


def print_rows(result, top: int) -> None:
    """The best rows: overall for a binary model, each class's best for one with classes."""
    print(
        f"{'class':>5s} {'gate':>9s} {'threshold':>9s} {'min comp':>8s} {'min total':>9s} "
        f"{'tta':>11s} {'Dice/img':>9s} {'IoU':>7s}"
    )
    classes = sorted({r.get("class", 1) for r in result.rows})
    per_class = max(1, top // len(classes)) if top else 0
    for c in classes:
        for r in [r for r in result.rows if r.get("class", 1) == c][:per_class]:
            gate = r.get("gate", "none")
            gate = f"hard@{r['gate_threshold']:g}" if gate == "hard" else gate
            print(
                f"{c:5d} {gate:>9s} {r['threshold']:9.2f} {r['min_component_area']:8d} "
                f"{r['min_total_area']:9d} {'+'.join(r['tta']) or 'none':>11s} "
                f"{r['dice_per_image']:9.4f} {r['iou']:7.4f}"
            )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.labelled import labelled_split, model_checkpoint
        from steelseg.postprocess import PostProcess
        from steelseg.tune import Grid, tune

        given = {
            "thresholds": args.thresholds,
            "min_component_areas": args.min_component_areas,
            "min_total_areas": args.min_total_areas,
        }
        grid = Grid(**{k: v for k, v in given.items() if v is not None})
        base = PostProcess(dilate=args.dilate, close=args.close, fill_holes=args.fill_holes)
        images = labelled_split(
            model_checkpoint(args.checkpoint), args.split, args.data_root, args.split_file
        )
        result = tune(
            common.predictor(args, PROG, use_tuned=False, tta=()),
            images,
            split=args.split,
            grid=grid,
            tta=args.tta or (),
            base=base,
            save=not args.no_save,
            progress=False if args.no_progress else None,
        )
        print(f"{result.n_images} images; {len(result.rows)} settings scored; best first:")
        print_rows(result, args.top)
        what = (
            "per-image Dice"
            if len(set(r.get("class", 1) for r in result.rows)) == 1
            else ("mean Dice over (image, class) pairs")
        )
        print(
            f"chosen: {result.postprocess.to_dict()}, tta {list(result.tta) or 'none'}: {what} "
            f"{result.score:.4f} (plain model {result.baseline:.4f})"
        )
        if result.sidecar is not None:
            print(f"saved {result.sidecar}")
        skipped = [s["image_id"] for s in result.skipped]
        print(f"{PROG}: tuned on {result.n_images} image(s)" + common.skipped_note(skipped))
        return common.SKIPPED if skipped else common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
