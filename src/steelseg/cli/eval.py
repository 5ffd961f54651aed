"""``steelseg-eval CHECKPOINT [--split test]``: see :func:`steelseg.evaluate.evaluate`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steelseg.cli import common

PROG = "steelseg-eval"


def build_parser():
    p = common.parser(
        PROG,
        "Evaluate a checkpoint on labelled images at full resolution, with and without "
        "post-processing; write eval.json and a self-contained report.html.",
    )
    common.add_checkpoint(p, exports=True)
    p.add_argument(
        "--out", type=Path, help="output folder (default: <run>/eval/<checkpoint>-<split>)"
    )
    common.add_data(p, "test")
    g = common.add_postprocess(p, "post-processing (overrides the tuned or default values)")
    common.add_tta(g, "the tuned flips, else none")
    r = p.add_argument_group("report")
    r.add_argument(
        "--iou-threshold",
        type=float,
        default=0.5,
        help="component IoU at which a true defect counts as found (default 0.5)",
    )
    r.add_argument(
        "--panels", type=common.at_least(0), default=50, help="per-image panels (default 50)"
    )
    r.add_argument(
        "--panel-width",
        type=common.at_least(16),
        default=800,
        help="panel picture width in pixels (default 800)",
    )
    common.add_runtime(p)
    return p


def print_summary(result: Mapping[str, Any]) -> None:
    """The report's headline numbers, with and without post-processing, as one table."""
    from steelseg.evaluate import VARIANTS
    from steelseg.report import HEADLINE

    m = result["metrics"]
    print(f"{result['split']}: {result['n_images']} images ({result['n_defective']} defective)")
    print(f"{'':54s} {'threshold only':>15s} {'post-processed':>15s}")
    for section, group, key, label in HEADLINE:
        vals = [m[v][group][key] for v in VARIANTS]
        print(f"{section + ': ' + label:54.54s} " + " ".join(f"{_fmt(v):>15s}" for v in vals))
    if "kaggle_dice" in m["postprocessed"]:  # a model with classes
        rows = [
            ("competition metric (mean over image, class)", [m[v]["kaggle_dice"] for v in VARIANTS])
        ]
        for i, _ in enumerate(m["postprocessed"]["classes"]):
            label = f"class {i + 1}: per-image Dice"
            rows.append((label, [m[v]["classes"][i]["dice_per_image"] for v in VARIANTS]))
        for label, vals in rows:
            print(f"{'Classes: ' + label:54.54s} " + " ".join(f"{_fmt(v):>15s}" for v in vals))
    print_classes(m["postprocessed"]["segmentation"], result.get("class_names", {}))


def print_classes(seg: Mapping[str, Any], names: Mapping[str, str]) -> None:
    """Per-class IoU, Dice, precision and recall, background included (post-processed); each
    class by its name (``names``: eval.json's ``class_names``, from the data's classes.csv)."""
    keys = ("IoU", "Dice", "Precision", "Recall")
    print(f"per class, post-processed (mIoU {_fmt(seg['mIoU'])}, background included):")
    print(f"{'class':>12s} {'true pixels':>14s} " + " ".join(f"{k:>10s}" for k in keys))
    for label, c in seg["classes"].items():
        scores = " ".join(f"{_fmt(c[k]):>10s}" for k in keys)
        print(f"{names.get(label, label):>12.12s} {c['pixels']:>14,d} {scores}")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.accuracy import check_text
        from steelseg.evaluate import default_out_dir, evaluate
        from steelseg.labelled import labelled_split, model_checkpoint

        # the labelled images first: a missing split stops before any model work
        images = labelled_split(
            model_checkpoint(args.checkpoint), args.split, args.data_root, args.split_file
        )
        out = args.out or default_out_dir(model_checkpoint(args.checkpoint), args.split)
        result = evaluate(
            common.predictor(args, PROG),
            images,
            split=args.split,
            out=out,
            iou_threshold=args.iou_threshold,
            max_panels=args.panels,
            panel_width=args.panel_width,
            progress=False if args.no_progress else None,
            tolerance=args.tolerance,
        )
        print_summary(result)
        if "runtime_check" in result:
            print(check_text(result["runtime_check"], args.split))
        skipped = [s["image_id"] for s in result["skipped"]]
        print(
            f"{PROG}: wrote {out / 'eval.json'} and {out / 'report.html'}"
            + common.skipped_note(skipped)
        )
        return common.SKIPPED if skipped else common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
