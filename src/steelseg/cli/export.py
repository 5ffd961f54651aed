"""``steelseg-export CHECKPOINT --format onnx|torchscript --out FILE``: see
:func:`steelseg.export.export`."""

from __future__ import annotations

import sys
from pathlib import Path

from steelseg.cli import common

PROG = "steelseg-export"
FORMATS = ("onnx", "torchscript")  # steelseg.export.FORMATS
ONNX_EXPORTERS = ("dynamo", "torchscript")
INPUT_DTYPES = ("uint8", "float32")


def build_parser():
    p = common.parser(
        PROG,
        "Export a steelseg checkpoint to ONNX or TorchScript (grey 0..255 images (N,1,H,W) in, "
        "logits out, normalisation inside), check it against the PyTorch module and write "
        "FILE.json with the metadata (input size, threshold, tuned post-processing).",
    )
    common.add_checkpoint(p)
    p.add_argument("--out", type=Path, required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default onnx")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.export import export, metadata_path

        meta = export(
            args.checkpoint,
            args.out,
            args.format,
            args.input_dtype,
            args.onnx_exporter,
            not args.no_tuned,
        )
        print(
            f"{PROG}: wrote {args.out} ({args.format}, input {meta['input']['dtype']} "
            f"(N,1,H,W), trained at {meta['input_size'][0]}x{meta['input_size'][1]}); max abs "
            f"difference from the module {meta['max_abs_diff']:.2e}; metadata "
            f"{metadata_path(args.out)}"
        )
        return common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
