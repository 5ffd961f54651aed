"""``steelseg-export CHECKPOINT --format onnx|openvino|torchscript --out FILE``: see
:func:`steelseg.export.export`."""

from __future__ import annotations

import sys
from pathlib import Path

from steelseg.cli import common

PROG = "steelseg-export"
FORMATS = ("onnx", "openvino", "torchscript")  # steelseg.export.FORMATS
PRECISIONS = ("auto", "fp32", "bf16", "int8")  # steelseg.export.EXPORT_PRECISIONS
ONNX_EXPORTERS = ("dynamo", "torchscript")
INPUT_DTYPES = ("uint8", "float32")


def build_parser():
    p = common.parser(
        PROG,
        "Export a steelseg checkpoint to ONNX, OpenVINO IR or TorchScript (grey 0..255 images "
        "(N,1,H,W) in, mask logits (N,C,H,W) out, and image_logits (N,C) for a model with the "
        "gate head; normalisation inside), optionally quantized to INT8 "
        "(calibrated on train-split images). Checks the logits against the PyTorch module, then "
        "per-image Dice and IoU on the labelled test split on every installed runtime that runs "
        "the file, against PyTorch fp32; refuses an export that falls more than --tolerance "
        "below it. Writes FILE and FILE.json (input size, classes, gate head, threshold, tuned "
        "post-processing, the checks, the default runtime).",
    )
    common.add_checkpoint(p)
    p.add_argument(
        "--out",
        type=Path,
        help="file to write: model.onnx, model.xml (OpenVINO; model.bin beside it) or model.pt "
        "(required unless --choose-runtime)",
    )
    p.add_argument(
        "--choose-runtime",
        action="store_true",
        help="instead of writing a file: choose, ahead of time, the runtime and precision that "
        "--runtime auto will use for this checkpoint on this machine (times and scores every "
        "installed pair on the run's validation images; cached in CHECKPOINT.runtime.json), "
        "and print the table",
    )
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default onnx")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="int8: quantize (onnx, openvino); fp32 / bf16: the precision the file runs at by "
        "default (bf16: OpenVINO on a CPU with AMX/AVX512-BF16); auto (default): the fastest "
        "that passes the accuracy check",
    )
    p.add_argument(
        "--tolerance",
        type=common.fraction,
        default=0.005,
        help="largest per-image Dice drop below PyTorch fp32 on the test split, in (0, 1) "
        "(default 0.005)",
    )
    p.add_argument(
        "--calibration-images",
        type=common.positive_int,
        default=64,
        help="train-split images INT8 is calibrated on (default 64, at least 16)",
    )
    p.add_argument(
        "--input-dtype", choices=INPUT_DTYPES, default="uint8", help="input images (default uint8)"
    )
    p.add_argument(
        "--onnx-exporter",
        choices=ONNX_EXPORTERS,
        default="dynamo",
        help="dynamo (torch.export, default) or torchscript (older, faster, deprecated)",
    )
    p.add_argument(
        "--no-tuned", action="store_true", help="ignore the tuned post-processing in the metadata"
    )
    g = p.add_argument_group("labelled images (default: the checkpoint's run)")
    g.add_argument(
        "--data-root",
        type=Path,
        help="the data folder, Kaggle or folder layout (default: the run's data.root)",
    )
    g.add_argument("--split-file", type=Path, help="a prepared split.csv (default: the run's own)")
    g.add_argument(
        "--batch-size", type=common.positive_int, default=8, help="images per pass (default 8)"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and not args.choose_runtime:
        parser.error("--out is required (or --choose-runtime)")
    if args.choose_runtime:
        return common.run(PROG, lambda: _choose_runtime(args))

    def body() -> int:
        from steelseg.accuracy import check_text
        from steelseg.export import export
        from steelseg.runtime import metadata_path

        meta = export(
            args.checkpoint,
            args.out,
            args.format,
            args.input_dtype,
            args.onnx_exporter,
            not args.no_tuned,
            precision=args.precision,
            tolerance=args.tolerance,
            calibration_images=args.calibration_images,
            data_root=args.data_root,
            split_file=args.split_file,
            batch_size=args.batch_size,
            progress=False if args.no_progress else None,
        )
        size = meta["input_size"]
        trained = f"trained at {size[0]}x{size[1]}" if size else "native resolution"
        outputs = f"{meta['classes']} class(es)" + (", gate head" if meta["gated"] else "")
        print(
            f"{PROG}: wrote {args.out} ({args.format} {meta['precision']}, input "
            f"{meta['input']['dtype']} (N,1,H,W), {trained}, {outputs}); max abs logit "
            f"difference from the module {meta['max_abs_diff']:.2e}; metadata "
            f"{metadata_path(args.out)}"
        )
        accuracy = meta["accuracy"]
        if accuracy["checked"]:
            for row in accuracy["runs"]:
                print(("  ok    " if row["ok"] else "  over  ") + check_text(row, "test"))
        else:
            print(f"{PROG}: accuracy not checked: {accuracy['reason']}", file=sys.stderr)
        default = meta["default"]
        print(f"{PROG}: runs by default on {default['runtime']} {default['precision']}")
        return common.OK

    return common.run(PROG, body)


def _choose_runtime(args) -> int:
    """``--choose-runtime``: the automatic runtime choice, made now and cached."""
    from steelseg.accuracy import check_text
    from steelseg.deploy import choose_runtime

    precision = None if args.precision == "auto" else args.precision
    choice = choose_runtime(
        args.checkpoint,
        args.tolerance,
        precision,
        args.batch_size,
        progress=False if args.no_progress else None,
    )
    for row in choice["runs"]:
        print(
            ("  ok    " if row["ok"] else "  over  ")
            + f"{row['speedup']:5.2f}x  "
            + check_text(row, "validation")
        )
    print(
        f"{PROG}: --runtime auto runs {args.checkpoint} on {choice['runtime']} "
        f"{choice['precision']} ({choice['speedup']:.1f}x PyTorch fp32; {choice['reason']})"
    )
    return common.OK


if __name__ == "__main__":
    sys.exit(main())
