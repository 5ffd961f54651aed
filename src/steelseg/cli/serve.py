"""``steelseg-serve MODEL``: see :mod:`steelseg.serve`."""

from __future__ import annotations

import os
import sys

from steelseg.cli import common

PROG = "steelseg-serve"
TOKEN_ENV = "STEELSEG_SERVE_TOKEN"  # the token when --token is not given
MAX_PIXELS = 4096 * 4096  # steelseg.serve.MAX_PIXELS, without importing it


def build_parser():
    p = common.parser(
        PROG,
        "Serve a model over HTTP on Ray Serve: POST /predict (an image file: JSON per class "
        "with the RLE, area, components and image probability; ?overlay=png for the overlay), "
        "the Open Inference Protocol (KServe v2) at /v2/..., Prometheus metrics at /metrics "
        "and a review page at /. Requests arriving within --max-wait-ms share one engine "
        "batch; more than --max-queue waiting get 503 with Retry-After. SIGTERM or Ctrl-C "
        "finishes the requests in flight, then stops. An .onnx or .xml export needs no "
        "PyTorch: pip install 'steelseg[serve]'. See docs/serve.md.",
    )
    common.add_checkpoint(p, exports=True)
    g = p.add_argument_group("service")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    g.add_argument("--port", type=common.positive_int, default=8000, help="port (default 8000)")
    g.add_argument(
        "--max-batch",
        type=common.positive_int,
        default=8,
        help="most images in one engine batch (default 8)",
    )
    g.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="how long the first request of a batch waits for others, ms (default 10)",
    )
    g.add_argument(
        "--max-queue",
        type=common.positive_int,
        default=64,
        help="most requests waiting for the model; more get 503 (default 64)",
    )
    g.add_argument(
        "--max-pixels",
        type=common.positive_int,
        default=MAX_PIXELS,
        help=f"largest image accepted, height x width (default {MAX_PIXELS})",
    )
    g.add_argument(
        "--token",
        help=f"require 'Authorization: Bearer TOKEN' on every endpoint but /v2/health/* and "
        f"the page (default: ${TOKEN_ENV} when set, else open)",
    )
    g.add_argument(
        "--review-dir",
        default="review",
        help="where the review page's 'wrong' and 'missed' images are saved, in the folder "
        "layout (default ./review)",
    )
    g.add_argument("--name", default="steelseg", help="the model's name in /v2/models/NAME")
    common.add_prediction(
        p,
        "post-processing (default: the values steelseg-tune stored with the checkpoint, else "
        "only the model's threshold); each option given replaces that one value",
        batches=False,  # --max-batch and --max-wait-ms form the batches; no progress bar
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from steelseg.serve import ServeOptions, serve_forever

        if not args.checkpoint.is_file():
            raise ValueError(f"no model file {args.checkpoint}")
        options = ServeOptions(
            model=str(args.checkpoint),
            predictor=common.predictor_options(args),
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_pixels=args.max_pixels,
            token=args.token or os.environ.get(TOKEN_ENV) or None,
            review_dir=args.review_dir,
            name=args.name,
        )
        serve_forever(options, args.host, args.port)
        return common.OK

    return common.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
