"""What every command shares: one option grammar, one error format, one set of exit codes.

Every ``steelseg-*`` command parses its arguments here (importing nothing heavy, so ``--help``
answers at once), then calls one library function and prints the outcome. A bad input is one
line ``<command>: error: <what is wrong and how to fix it>``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

#: Exit codes, the same for every command.
OK = 0  # done
FAILED = 1  # a run or a job of a sweep failed; Hydra's own config errors
BAD_INPUT = 2  # nothing done: a bad argument, file or config value (one line says which)
SKIPPED = 3  # done, but some inputs were skipped (each named on stderr)

EXIT_CODES = (
    "exit codes: 0 done; 2 bad input (one line says what, nothing written); 3 done, but some "
    "inputs were skipped (each named); 1 failed"
)
TTA_FLIPS = ("hflip", "vflip")  # steelseg.postprocess.TTA_CHOICES, without importing it
RUNTIMES = ("torch", "onnxruntime", "openvino")  # steelseg.runtime.RUNTIMES
PRECISIONS = ("fp32", "bf16", "int8")  # steelseg.runtime.PRECISIONS
SPLITS = ("train", "val", "test", "all")  # steelseg.prepare.SPLIT_CHOICES
GATES = ("none", "hard", "soft")  # steelseg.postprocess.GATES


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser whose help ends with the exit codes."""
    return Parser(prog=prog, description=description, epilog=EXIT_CODES)


# ----------------------------------------------------------------------------- value types
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return at_least(1)(text)


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def parse_tta(text: str) -> tuple[str, ...]:
    """A ``--tta`` value: flips separated by commas (``hflip,vflip``), or ``none``."""
    if text.strip().lower() in ("", "none"):
        return ()
    flips = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    for name in flips:
        if name not in TTA_FLIPS:
            raise argparse.ArgumentTypeError(f"unknown TTA {name!r}; choose from {list(TTA_FLIPS)}")
    return flips


def comma_list(kind: type) -> Callable[[str], list]:
    """argparse type: comma-separated values of ``kind`` (``int`` or ``float``)."""
    what = "integers" if kind is int else "numbers"

    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


# ----------------------------------------------------------------------------- option groups
def add_checkpoint(p: argparse.ArgumentParser, exports: bool = False) -> None:
    """The positional checkpoint argument (or, with ``exports``, an exported model file)."""
    what = "a .ckpt file written by steelseg-train"
    if exports:
        what += (
            ", or a model file written by steelseg-export (.onnx, .xml for OpenVINO, .pt): "
            "ONNX and OpenVINO files need no PyTorch"
        )
    p.add_argument("checkpoint", type=Path, metavar="MODEL" if exports else "CHECKPOINT", help=what)


def add_data(p: argparse.ArgumentParser, split: str) -> None:
    """``--split``, ``--data-root``, ``--split-file``: which labelled images to use."""
    g = p.add_argument_group("data (default: the split the checkpoint's run was trained on)")
    g.add_argument(
        "--split",
        choices=SPLITS,
        default=split,
        help=f"which images (default {split}); 'all': every image of the split file, or every "
        "labelled image of --data-root when it has none",
    )
    g.add_argument(
        "--data-root",
        type=Path,
        help="the data folder, Kaggle or folder layout (default: the run's data.root)",
    )
    g.add_argument("--split-file", type=Path, help="a prepared split.csv (default: the run's own)")


def add_runtime(p: argparse.ArgumentParser, batches: bool = True) -> None:
    """``--runtime``, ``--precision``, ``--tolerance``, ``--device``, ``--batch-size`` and
    ``--no-progress``: where and how the model runs. ``batches=False`` leaves out the batch
    size and the progress bar, for a command that forms its own batches (``steelseg-serve``)."""
    g = p.add_argument_group("model run")
    g.add_argument(
        "--runtime",
        choices=("auto",) + RUNTIMES,
        default="auto",
        help="auto (default): on a CPU the fastest installed runtime and precision whose "
        "per-image Dice on the model's validation images stays within --tolerance of PyTorch "
        "fp32 (measured once, cached beside the checkpoint); on a GPU torch. onnxruntime and "
        "openvino need their extra: pip install 'steelseg[onnxruntime]' / 'steelseg[openvino]'",
    )
    g.add_argument(
        "--precision",
        choices=("auto",) + PRECISIONS,
        default="auto",
        help="auto (default), fp32, bf16 (CPUs with AMX/AVX512-BF16, CUDA GPUs) or int8 "
        "(onnxruntime/openvino; a quantized export); --runtime torch alone is plain PyTorch (fp32 "
        "on a CPU)",
    )
    g.add_argument(
        "--tolerance",
        type=fraction,
        default=0.005,
        help="largest per-image Dice drop below PyTorch fp32 that --runtime auto accepts, in "
        "(0, 1) (default 0.005)",
    )
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    if batches:
        g.add_argument(
            "--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)"
        )
        g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_tta(p: argparse._ActionsContainer, default: str) -> None:
    """``--tta [FLIPS]``: test-time flips; the bare flag means both, ``none`` means off."""
    p.add_argument(
        "--tta",
        nargs="?",
        const="hflip,vflip",
        type=parse_tta,
        metavar="FLIPS",
        help=f"test-time flips averaged with the plain prediction, comma-separated from "
        f"{','.join(TTA_FLIPS)}, or none; --tta alone: both (default: {default})",
    )


def add_prediction(p: argparse.ArgumentParser, title: str, batches: bool = True) -> None:
    """What a command that predicts takes besides its inputs: the post-processing overrides
    (under ``title``), ``--tta`` and the model run (:func:`add_runtime`)."""
    add_tta(add_postprocess(p, title), "the tuned flips, else none")
    add_runtime(p, batches=batches)


def add_postprocess(p: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """Overrides of each post-processing value (absent: keep the tuned or default one)."""
    g = p.add_argument_group(title)
    g.add_argument("--threshold", type=float, help="probability threshold, in (0, 1)")
    g.add_argument("--min-component-area", type=int, help="drop components below N pixels")
    g.add_argument("--min-total-area", type=int, help="empty masks below N pixels in total")
    g.add_argument("--dilate", type=int, help="dilation kernel size in pixels (0 = off)")
    g.add_argument("--close", type=int, help="closing kernel size in pixels (0 = off)")
    g.add_argument(
        "--fill-holes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fill holes inside predicted defects",
    )
    g.add_argument(
        "--gate",
        choices=GATES,
        help="how the image probability of a model with the gate head (model.gate=true) acts: "
        "none; hard: empty a class's mask below --gate-threshold; soft: multiply its pixel "
        "probabilities by it",
    )
    g.add_argument(
        "--gate-threshold",
        type=fraction,
        help="with --gate hard: the image probability below which a mask is emptied, in (0, 1)",
    )
    g.add_argument(
        "--no-tuned",
        action="store_true",
        help="ignore the post-processing and TTA steelseg-tune stored beside the checkpoint",
    )
    return g


POSTPROCESS_FIELDS = (
    "threshold",
    "min_component_area",
    "min_total_area",
    "dilate",
    "close",
    "fill_holes",
    "gate",
    "gate_threshold",
)


def postprocess_overrides(args: argparse.Namespace) -> dict:
    """The post-processing values given on the command line (see :func:`add_postprocess`)."""
    return {k: getattr(args, k) for k in POSTPROCESS_FIELDS if getattr(args, k, None) is not None}


def predictor_options(
    args: argparse.Namespace,
    use_tuned: bool | None = None,
    tta: tuple[str, ...] | None = None,
) -> dict:
    """:func:`steelseg.deploy.load_predictor`'s keyword arguments the options ask for (the
    model file aside): runtime, precision, device, batch size, TTA, tuned post-processing and
    the post-processing options."""
    options = dict(
        runtime=args.runtime,
        precision=args.precision,
        device=args.device,
        tta=args.tta if tta is None else tta,
        use_tuned=not getattr(args, "no_tuned", False) if use_tuned is None else use_tuned,
        tolerance=args.tolerance,
        overrides=postprocess_overrides(args),
    )
    if hasattr(args, "batch_size"):  # not where the command forms its own batches
        options["batch_size"] = args.batch_size
        options["progress"] = not getattr(args, "no_progress", False)
    return options


def predictor(
    args: argparse.Namespace,
    prog: str = "steelseg",
    use_tuned: bool | None = None,
    tta: tuple[str, ...] | None = None,
):
    """The :class:`steelseg.predict.Predictor` the options ask for (via
    :func:`steelseg.deploy.load_predictor` with :func:`predictor_options`): the model file,
    runtime, precision, device, batch size, TTA and tuned post-processing, with the
    post-processing options applied. Says on stderr where the model runs."""
    from steelseg.deploy import load_predictor

    loaded = load_predictor(args.checkpoint, **predictor_options(args, use_tuned, tta))
    print(f"{prog}: model on {loaded.describe()}{_why(loaded.choice)}", file=sys.stderr)
    return loaded


def _why(choice: dict | None) -> str:
    """`` (auto: ...)`` for a runtime chosen automatically."""
    if not choice:
        return ""
    return (
        f" (auto: {choice['speedup']:.1f}x PyTorch fp32; {choice['reason']}; --runtime torch "
        "for plain PyTorch fp32)"
    )


# ----------------------------------------------------------------------------- running
def run(prog: str, body: Callable[[], int], errors: Sequence[type] = (ValueError, OSError)) -> int:
    """Run a command's body; return its exit code. A listed error is one line and code 2.

    The console script exits with the returned code.

    Warnings of the library (e.g. ``skipped <file>: <reason>``) go to stderr as
    ``<prog>: <message>``.
    """
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(message)s", force=True)
    try:
        code = body()
    except tuple(errors) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        code = BAD_INPUT
    return code


def skipped_note(skipped: Sequence[str]) -> str:
    """``; N skipped (a, b, ...)`` for the closing line of a command."""
    if not skipped:
        return "; 0 skipped"
    names = ", ".join(Path(k).name for k in list(skipped)[:5])
    return f"; {len(skipped)} skipped ({names}{' ...' if len(skipped) > 5 else ''})"
