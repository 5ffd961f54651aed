"""The runtimes section's models (``--runtime-models``): each a checkpoint, a trained one given
(``--quickstart-ckpt``, ``--resnext-ckpt``) copied into the work folder with its run's config,
or an untrained network of the same shape (accuracy and INT8 then go unmeasured)."""

from __future__ import annotations

import argparse
import functools
import shutil
from pathlib import Path
from typing import Any

from bench.context import FULL_SIZE, Bench, save_untrained

#: the section's big model: the reference's network on full strips, 3 input channels
RESNEXT = dict(arch="fpn", encoder_name="resnext50_32x4d", in_channels=3, arch_kwargs={})


def runtime_models(bench: Bench) -> list[dict[str, Any]]:
    """The section's models (``--runtime-models``): each a checkpoint, trained (given,
    copied into the work folder) or an untrained network of the same shape."""
    a = bench.args
    models = {
        "resnext50": (a.resnext_ckpt, untrained_resnext),
        "quickstart": (a.quickstart_ckpt, functools.partial(untrained_quickstart, a)),
    }
    specs = []
    for name in a.runtime_models:
        given, untrained = models[name]
        folder = bench.work / "runtimes" / name
        shutil.rmtree(folder, ignore_errors=True)  # a reused --workdir: measure afresh
        folder.mkdir(parents=True)
        ckpt = stage_run(Path(given), folder) if given else untrained(folder)
        specs.append(
            {
                "name": name,
                "folder": folder,
                "checkpoint": ckpt,
                "given": given,
                "trained": bool(given),
            }
        )
    return specs


def untrained_resnext(folder: Path) -> Path:
    """FPN/resnext50_32x4d (3 input channels) for full 256x1600 strips, untrained."""
    from steelseg.model import SteelSegModule

    module = SteelSegModule(**RESNEXT, encoder_weights=None, input_size=list(FULL_SIZE))
    return save_untrained(module, folder / "untrained.ckpt")


def untrained_quickstart(args: argparse.Namespace, folder: Path) -> Path:
    """The network of ``steelseg-train experiment=quickstart`` (its composed config),
    untrained; with --smoke at the smoke size instead of 128x800."""
    from steelseg import config
    from steelseg.train import build

    size = [f"data.height={args.height}", f"data.width={args.width}"] if args.smoke else []
    cfg = config.compose(["experiment=quickstart", *size], output_dir=folder)
    return save_untrained(build(cfg.model), folder / "untrained.ckpt")


def stage_run(checkpoint: Path, folder: Path) -> Path:
    """A copy of ``checkpoint`` in ``folder``/checkpoints/, with its run's config.yaml (where
    the labelled splits are found) and its tuned post-processing: what the benchmark writes
    beside it (exports, the runtime choice) stays in the work folder, and is made afresh."""
    from steelseg.io import run_folder
    from steelseg.postprocess import sidecar_path

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    target = folder / "checkpoints" / checkpoint.name
    target.parent.mkdir(parents=True, exist_ok=True)
    config = run_folder(checkpoint) / "config.yaml"
    if config.is_file():
        shutil.copy2(config, folder / "config.yaml")
    for source in (checkpoint, sidecar_path(checkpoint)):
        if source.is_file():
            shutil.copy2(source, target.with_name(source.name))
    return target
