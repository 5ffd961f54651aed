"""Where steelseg's Hydra configs live, and composing them without the command line.

``conf/`` sits at the repository root; a wheel carries the same files as ``steelseg/conf``.
:func:`compose` gives notebooks and tests the exact config ``steelseg-train`` would run::

    cfg = steelseg.config.compose(["experiment=quickstart"], output_dir="runs/nb")
    metrics = steelseg.train.train(cfg)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

GPU_ACCELERATORS = ("auto", "gpu", "cuda")  # trainer.accelerator values that pick a CUDA GPU


def auto_precision(accelerator: str = "auto", cpu_bf16: bool = False) -> str:
    """Trainer precision for ``accelerator``: ``bf16-mixed`` on a CUDA GPU with bf16, else fp32;
    with ``cpu_bf16``, also ``bf16-mixed`` on a CPU that runs bf16 natively (AMX/AVX512-BF16:
    about 2-4x faster training of small convolutional networks there).

    The ``${auto_precision:${trainer.accelerator}}`` resolver of ``conf/trainer/default.yaml``;
    ``trainer.precision=32-true`` (or any Lightning value) overrides it.
    """
    import torch

    gpu = str(accelerator).lower() in GPU_ACCELERATORS and torch.cuda.is_available()
    if gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    if cpu_bf16:
        from steelseg.runtime import native_bf16

        return "bf16-mixed" if native_bf16() else "32-true"
    return "32-true"


OmegaConf.register_new_resolver("auto_precision", auto_precision, replace=True)


def input_size(crop: object, height: int, width: int) -> list[int] | None:
    """The model's ``input_size``: None (native resolution) when training on ``data.crop``
    windows, else the ``data.height x data.width`` every image is resized to.

    The ``${input_size:${data.crop},${data.height},${data.width}}`` resolver of train.yaml.
    """
    return None if crop not in (None, "", "none") else [int(height), int(width)]


OmegaConf.register_new_resolver("input_size", input_size, replace=True)


def conf_dir() -> Path:
    """The config folder: packaged with the wheel, else the source checkout's ``conf/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"steelseg's configs are missing (looked in {here / 'conf'} and {here.parents[1] / 'conf'});"
        " reinstall steelseg"
    )


def compose(
    overrides: Sequence[str] = (),
    output_dir: str | os.PathLike | None = None,
    config_name: str = "train",
) -> DictConfig:
    """Compose a config as ``steelseg-train OVERRIDES`` would, for use outside the launcher.

    Args:
        overrides: Hydra overrides, e.g. ``["model=unet", "trainer.max_epochs=2"]``.
        output_dir: The run folder (``paths.output_dir``); default
            ``outputs/<task_name>/runs/<time>`` like the launcher.
        config_name: Primary config in :func:`conf_dir`.

    Returns:
        The composed config, without the ``hydra`` node (nothing in it needs a Hydra run).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides))
    if output_dir is None:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        output_dir = Path("outputs") / str(cfg.get("task_name", "train")) / "runs" / stamp
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg
