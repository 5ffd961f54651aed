"""``steelseg-predict CHECKPOINT INPUT... --out DIR``: see :func:`steelseg.writer.predict_to_folder`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from steelseg.cli import common

PROG = "steelseg-predict"
OUTPUTS = ("masks", "overlays", "panels", "coco")  # steelseg.writer.OUTPUTS, without importing it
ENGINES = ("local", "ray")  # where the model runs: this process, or Ray actors (docs/scale.md)


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
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--outputs",
        type=_outputs,
        metavar="LIST",
        help=f"what to write besides predictions.csv and predict.json, comma-separated from "
        f"{','.join(OUTPUTS)}, or none (default: all); overlays and panels are PNG pictures "
        "that cost most of the time besides the model",
    )
    what.add_argument("--masks-only", action="store_true", help="the same as --outputs masks,coco")
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
    g = p.add_argument_group("engine (archive scale: docs/scale.md)")
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local (default): the model runs in this process; ray: the same model runs as "
        "Ray Data actors that read the images themselves, this process writing the same "
        "outputs (needs pip install 'steelseg[ray]'; MODEL and INPUT paths readable on every "
        "node)",
    )
    g.add_argument(
        "--address",
        metavar="ADDRESS",
        help="with --engine ray: the cluster to attach to, auto (the one this machine belongs "
        "to) or ray://HOST:10001; default: a new local Ray on this machine's CPUs",
    )
    g.add_argument(
        "--actors",
        type=common.positive_int,
        metavar="N",
        help="with --engine ray: model actors, each with 1 CPU (and 1 GPU when the model runs "
        "on CUDA); default: one per CPU (GPU) of the cluster",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.engine != "ray" and (args.address or args.actors):
        parser.error("--address and --actors need --engine ray")

    def body() -> int:
        from steelseg.inputs import collect_inputs, no_images_error, unmatched_reason
        from steelseg.io import check_out_folder
        from steelseg.review import predict_for_review
        from steelseg.writer import predict_to_folder

        if args.engine == "ray":
            from steelseg.distributed import require_ray

            require_ray()  # before anything is read or loaded
        sources, unmatched = collect_inputs(args.inputs)
        if not sources:  # before the model is loaded
            raise no_images_error(args.inputs)
        for text in unmatched:
            print(f"{PROG}: skipped {text}: {unmatched_reason(text)}", file=sys.stderr)
        check_out_folder(args.out)
        sample, note = _sample(args, sources)  # before the model is loaded or anything runs
        predictor = common.predictor(args, PROG)
        if note:
            print(f"{PROG}: {note}", file=sys.stderr)
        kw = dict(
            outputs=_chosen_outputs(args),
            progress=False if args.no_progress else None,
            unmatched=unmatched,
            sample=sample,
            predict_files=_engine(args),
        )
        if args.review:
            summary = predict_for_review(predictor, sources, args.out, args.review, **kw)
        else:
            summary = predict_to_folder(predictor, sources, args.out, **kw)
        panels = f", {summary['panels']} panel(s) against ground truth" if summary["panels"] else ""
        print(
            f"{PROG}: {summary['images']} image(s) predicted ({summary['with_defect']} with a "
            f"defect{panels}) into {args.out}" + common.skipped_note(list(summary["skipped"]))
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


def _engine(args: argparse.Namespace) -> Any:
    """The ``predict_files`` of ``--engine``: None for local, else the Ray engine's."""
    if args.engine == "local":
        return None
    from steelseg.distributed import RayEngine

    engine = RayEngine(args.checkpoint, common.predictor_options(args), args.address, args.actors)
    print(
        f"{PROG}: the model runs as Ray Data actors ({args.actors or 'one per CPU or GPU'}) on "
        f"{args.address or 'a new local Ray'}",
        file=sys.stderr,
    )
    return engine.predict_files


def _chosen_outputs(args: argparse.Namespace) -> tuple[str, ...]:
    if args.masks_only:
        return ("masks", "coco")
    return OUTPUTS if args.outputs is None else args.outputs


def _outputs(text: str) -> tuple[str, ...]:
    """argparse type of ``--outputs``: names of OUTPUTS, or none."""
    names = [] if text.strip() == "none" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(names) - set(OUTPUTS))
    if unknown or not (names or text.strip() == "none"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose from {','.join(OUTPUTS)}, comma-separated, or none"
        )
    return tuple(names)


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
