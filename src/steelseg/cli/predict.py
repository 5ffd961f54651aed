"""``steelseg-predict CHECKPOINT INPUT... --out DIR``: see :func:`steelseg.writer.predict_to_folder`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from steelseg.cli import common

PROG = "steelseg-predict"


def build_parser():
    p = common.parser(
        PROG,
        "Predict defect masks with a steelseg checkpoint or exported model (ONNX / OpenVINO "
        "files run without PyTorch). Writes OUT/masks/<id>.png (a binary model: 0/255; a "
        "model of one channel per class: the class id of each pixel, 0 = none), "
        "OUT/overlays/<id>.png (one colour per class for a per-class model), OUT/panels/<id>.png "
        "(original / prediction / overlay / ground truth, when ground truth is known: a "
        "Kaggle-layout folder or its train_images/ with train.csv beside it), "
        "OUT/predictions.csv (ImageId,ClassId,EncodedPixels,ClassName; a binary model: one row "
        "per image, ClassId 0 = any defect class; a per-class model: one row per image and "
        "class found, ClassId 1..4, and a ClassId 0 row for an image without any; EncodedPixels "
        "empty for no defect; ClassName from the training data's classes.csv), "
        "OUT/predictions.coco.json (a polygon per defect with its mean probability as score) "
        "and OUT/predict.json. With a 4-class model and a "
        "sample_submission.csv (beside test_images/ of the input folder, or "
        "--sample-submission), also OUT/submission.csv, checked as Kaggle would.",
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
    p.add_argument(
        "--sample-submission",
        type=Path,
        metavar="FILE",
        help="a Kaggle sample_submission.csv: also write OUT/submission.csv in its layout for "
        "every image it names (all must be among the inputs; needs a model.classes=4 model). "
        "Default: the sample_submission.csv beside test_images/ when the input is that folder",
    )
    p.add_argument(
        "--review",
        type=common.positive_int,
        metavar="N",
        help="active learning: also write the N images the model is least sure of (pixels "
        "near the threshold, the gate near its threshold, disagreement between test-time "
        "flips; docs/datasets.md) to OUT/review/, a COCO task for CVAT or Label Studio with "
        "the model's masks as pre-annotations, and every image's terms to OUT/scores.csv; "
        "predicts with test-time flips (the model's, else both)",
    )
    common.add_prediction(
        p,
        "post-processing (default: the values steelseg-tune stored with the checkpoint, else "
        "only the model's threshold); each option given replaces that one value",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.inputs import collect_inputs
        from steelseg.io import check_out_folder
        from steelseg.review import predict_for_review
        from steelseg.writer import predict_to_folder

        sources, unmatched = collect_inputs(args.inputs)
        for text in unmatched:
            print(f"{PROG}: skipped {text}: no image file matches it", file=sys.stderr)
        if not sources:  # before the model is loaded
            raise ValueError("no input images found")
        check_out_folder(args.out)
        sample, note = _sample(args, sources)  # before the model is loaded or anything runs
        predictor = common.predictor(args, PROG)
        if note:
            print(f"{PROG}: {note}", file=sys.stderr)
        kw = dict(
            masks_only=args.masks_only,
            progress=False if args.no_progress else None,
            unmatched=unmatched,
            sample=sample,
        )
        if args.review:
            summary = predict_for_review(predictor, sources, args.out, args.review, **kw)
        else:
            summary = predict_to_folder(predictor, sources, args.out, **kw)
        print(
            f"{PROG}: {summary['images']} image(s) predicted ({summary['with_defect']} with a "
            f"defect, {summary['panels']} with ground truth) into {args.out}"
            + common.skipped_note(list(summary["skipped"]))
        )
        review = summary.get("review")
        if review:
            print(
                f"{PROG}: {review['images']} most uncertain image(s) to review in "
                f"{review['folder']} (see its README.txt; scores of every image in "
                f"{args.out / 'scores.csv'})"
            )
        sub = summary["submission"]
        if sub is not None:
            empty = sub["left_empty"]
            print(
                f"{PROG}: {args.out / sub['file']} is a valid Kaggle submission: "
                f"{sub['images']} images, {sub['non_empty']} non-empty rows of {sub['rows']}, "
                f"{sub['layout']} layout"
                + (f"; {len(empty)} skipped image(s) left empty" if empty else "")
            )
        return common.SKIPPED if summary["skipped"] else common.OK

    return common.run(PROG, body)


def _sample(args: argparse.Namespace, sources: list[Any]) -> tuple[Any, str]:
    """The sample submission to answer (``--sample-submission``, or the one beside the input
    ``test_images/``), checked against the model and the inputs; and a note when the one found
    beside the images is left out because the model is binary.

    Raises:
        ValueError: ``--sample-submission`` for a model that is not of 4 classes; a sample
            that cannot be read, or names images that are not among the inputs.
    """
    from steelseg.deploy import model_outputs
    from steelseg.submission import N_CLASSES, check_submission, find_sample, read_sample

    path = args.sample_submission or find_sample(args.inputs, sources)
    if path is None:
        return None, ""
    classes = model_outputs(args.checkpoint)[0]
    if args.sample_submission is None and classes != N_CLASSES:
        return None, (
            f"no submission.csv for {path}: the model predicts {classes} class(es), a Kaggle "
            f"submission needs {N_CLASSES} (train with model.classes={N_CLASSES})"
        )
    sample = read_sample(path)
    check_submission(sample, classes, sources)
    return sample, ""


if __name__ == "__main__":
    sys.exit(main())
