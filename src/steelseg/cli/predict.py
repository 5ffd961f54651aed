"""``steelseg-predict CHECKPOINT INPUT... --out DIR``: see :func:`steelseg.predict.predict_to_folder`."""

from __future__ import annotations

import sys
from pathlib import Path

from steelseg.cli import common

PROG = "steelseg-predict"


def build_parser():
    p = common.parser(
        PROG,
        "Predict defect masks with a steelseg checkpoint or exported model (ONNX / OpenVINO files run without PyTorch). Writes OUT/masks/<id>.png (0/255), "
        "OUT/overlays/<id>.png, OUT/panels/<id>.png (original / prediction / overlay / ground "
        "truth, when ground truth is known: a Kaggle-layout folder or its train_images/ with "
        "train.csv beside it), OUT/predictions.csv (ImageId,ClassId,EncodedPixels; ClassId 0 = "
        "any defect class, EncodedPixels empty for no defect) and OUT/predict.json.",
    )
    common.add_checkpoint(p, exports=True)
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image file, folder (or Kaggle-layout folder) or quoted glob such as 'dir/*.jpg'",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--masks-only", action="store_true", help="write masks and the CSV, no overlays or panels"
    )
    g = common.add_postprocess(
        p,
        "post-processing (default: the values steelseg-tune stored with the checkpoint, else "
        "only the model's threshold); each option given replaces that one value",
    )
    common.add_tta(g, "the tuned flips, else none")
    common.add_runtime(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.io import check_out_folder
        from steelseg.predict import collect_inputs, predict_to_folder

        sources, unmatched = collect_inputs(args.inputs)
        for text in unmatched:
            print(f"{PROG}: skipped {text}: no image file matches it", file=sys.stderr)
        if not sources:  # before the model is loaded
            raise ValueError("no input images found")
        check_out_folder(args.out)
        predictor = common.predictor(args, PROG)
        summary = predict_to_folder(
            predictor,
            sources,
            args.out,
            masks_only=args.masks_only,
            progress=False if args.no_progress else None,
            unmatched=unmatched,
        )
        print(
            f"{PROG}: {summary['images']} image(s) predicted ({summary['with_defect']} with a "
            f"defect, {summary['panels']} with ground truth) into {args.out}"
            + common.skipped_note(list(summary["skipped"]))
        )
        return common.SKIPPED if summary["skipped"] else common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
