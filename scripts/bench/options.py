"""The benchmark's options: its sections, the tiny/full/smoke profiles that fill every unset
flag, and their validation. Light on purpose (no torch at import), so ``--help`` answers at once."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SECTIONS = (
    "model", "steelseg", "reference", "inference", "rle", "data", "memory", "runtimes", "serve",
)  # fmt: skip
#: sections a default run leaves out on a CUDA device: they measure the CPU
CPU_SECTIONS = ("runtimes",)
#: sections only run when asked for (``--sections``): serve starts a Ray cluster and a server,
#: needs the optional serve extra, and measures a deployment, not the library
OPT_IN_SECTIONS = ("serve",)
#: deprecated section names: ``seed`` meant the reference (the original task) before the rename
SECTION_ALIASES = {"seed": "reference"}
#: the runtimes section's models, and the speed-up over PyTorch eager fp32 each aims at
#: (``--runtime auto``, full strips)
RUNTIME_TARGETS = {"resnext50": 5.0, "quickstart": 3.0}
RUNTIME_MODELS = tuple(RUNTIME_TARGETS)
#: the serve section's target: images/s at 8 clients over the model-only images/s (issue 22)
SERVE_TARGET = 0.8
SLIM_FPN = {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}

#: --tiny (the CPU default): a ~1M-parameter network at 64x320 so every section runs in minutes
TINY = dict(
    arch="fpn", encoder="tu-mobilenetv3_small_100", in_channels=1, arch_kwargs=SLIM_FPN,
    batch=8, reference_batch=8, height=64, width=320, images=120, epochs=2, steps=5, warmup=2,
    workers=0, infer_batch=4, infer_steps=2, memory_images=500, data_samples=200, rle_rows=500,
    runtime_batches="1,8", runtime_images=16, runtime_seconds=2.0, calibration_images=64,
    runtime_models="resnext50,quickstart", serve_clients="1,8", serve_requests=200,
)  # fmt: skip
#: the GPU default: the reference's network at the reference's size, the issue's batch 32
FULL = dict(
    arch="fpn", encoder="resnext50_32x4d", in_channels=3, arch_kwargs={},
    batch=32, reference_batch=8, height=256, width=416, images=320, epochs=3, steps=30, warmup=10,
    workers=None, infer_batch=32, infer_steps=8, memory_images=500, data_samples=400,
    rle_rows=1000, runtime_batches="1,8", runtime_images=16, runtime_seconds=2.0,
    calibration_images=64, runtime_models="resnext50,quickstart", serve_clients="1,8",
    serve_requests=200,
)  # fmt: skip
#: --smoke: a few steps of everything, for tests
SMOKE = dict(
    images=30, epochs=2, steps=2, warmup=1, infer_batch=2, infer_steps=1, memory_images=40,
    data_samples=16, rle_rows=20, batch=4, reference_batch=4, runtime_batches="1,2",
    runtime_images=4, runtime_seconds=0.0, calibration_images=16, runtime_models="quickstart",
    serve_requests=16,
)  # fmt: skip

log = logging.getLogger("benchmark")


def resolve_args(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill unset options from the tiny/full profile (and --smoke); validate them."""
    from steelseg.dataset import check_size
    from steelseg.model import compile_mode

    tiny = device.type == "cpu" if args.tiny is None else args.tiny
    profile = dict(TINY if tiny else FULL) | (SMOKE if args.smoke else {})
    for key, value in profile.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.tiny = tiny
    if (args.arch, args.encoder) != (profile["arch"], profile["encoder"]):
        args.arch_kwargs = {}  # the profile's decoder sizes belong to its own network
    check_size(args.height, args.width)
    compile_mode(args.compile)
    for key in (
        "batch",
        "reference_batch",
        "images",
        "epochs",
        "steps",
        "infer_batch",
        "infer_steps",
    ):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}={getattr(args, key)} must be >= 1")
    args.runtime_batches = parse_batches(args.runtime_batches)
    args.serve_clients = parse_batches(args.serve_clients, "--serve-clients", "client counts")
    if isinstance(args.runtime_models, str):
        args.runtime_models = [m.strip() for m in args.runtime_models.split(",") if m.strip()]
    bad = set(args.runtime_models) - set(RUNTIME_MODELS)
    if bad or not args.runtime_models:
        raise ValueError(f"--runtime-models: choose from {list(RUNTIME_MODELS)}, got {sorted(bad)}")
    for key in ("runtime_images", "runtime_threads", "serve_requests"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}={getattr(args, key)} must be >= 1")
    if args.serve_model is not None and not args.serve_model.is_file():
        raise FileNotFoundError(f"--serve-model {args.serve_model} does not exist")
    if args.images < 10 or args.memory_images < 10:
        raise ValueError("--images and --memory-images must be >= 10 (an 80/10/10 split)")
    bad = set(args.sections) - set(SECTIONS)
    if bad:
        raise ValueError(f"unknown section(s) {sorted(bad)}; choose from {list(SECTIONS)}")
    return args


def parse_batches(
    text: str | list[int], option: str = "--runtime-batches", what: str = "batch sizes"
) -> list[int]:
    """``--runtime-batches`` (or ``--serve-clients``): comma-separated counts, each >= 1,
    sorted."""
    if isinstance(text, list):
        return text
    try:
        batches = sorted({int(b) for b in str(text).split(",") if b.strip()})
    except ValueError:
        batches = []
    if not batches or batches[0] < 1:
        raise ValueError(f"{option}={text}: give {what} >= 1, e.g. 1,8")
    return batches


def parse_sections(text: str) -> list[str]:
    """The comma-separated ``--sections``, deprecated names mapped to the current ones (``seed``:
    ``reference``); unknown names pass through for :func:`resolve_args` to reject."""
    sections = []
    for name in (s.strip() for s in str(text).split(",")):
        if name in SECTION_ALIASES:
            log.warning("--sections %s is deprecated; use %s", name, SECTION_ALIASES[name])
            name = SECTION_ALIASES[name]
        if name and name not in sections:
            sections.append(name)
    return sections


def pick_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: use auto, cpu or cuda")
    return device
