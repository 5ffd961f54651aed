"""steelseg: binary segmentation of steel surface defects (Kaggle Severstal layout).

Modules follow the data path: ``rle`` (Kaggle run-length encoding, CSV reader) -> ``prepare``
(stratified split, uint8 cache) -> ``dataset`` (Dataset, LightningDataModule) -> ``model``
(LightningModule) -> ``metric`` (IoU, Dice). ``synth`` makes synthetic data in the Kaggle layout.
Heavy modules (torch) are imported lazily, so ``import steelseg`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_SUBMODULES = ("config", "dataset", "losses", "metric", "model", "prepare", "rle", "synth", "train")
__all__ = ["__version__", *_SUBMODULES]

if TYPE_CHECKING:  # pragma: no cover
    from steelseg import config, dataset, losses, metric, model, prepare, rle, synth, train


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"steelseg.{name}")
    raise AttributeError(f"module 'steelseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
