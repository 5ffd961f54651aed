"""steelseg: binary segmentation of steel surface defects (Kaggle Severstal layout).

Modules follow the data path, and none imports one further along it:

* ``io`` (atomic writes, reading images), ``runtime`` (PyTorch / ONNX Runtime / OpenVINO
  engines, no torch needed), ``config`` (Hydra configs, metric names);
* ``rle`` (Kaggle run-length encoding, train.csv) -> ``synth`` (synthetic data in the Kaggle
  layout) -> ``prepare`` (stratified split, uint8 cache) -> ``dataset`` (Dataset,
  LightningDataModule);
* ``losses``, ``metric`` (IoU, Dice, per-image Dice, detection) -> ``checkpoint`` (atomic,
  weights-only checkpoint files) -> ``callbacks`` -> ``model`` (LightningModule) -> ``sweep``
  -> ``train`` (fit, validate, test);
* ``postprocess`` -> ``submission`` (Kaggle submission CSV) -> ``draw`` (overlays) ->
  ``predict`` (Predictor, the one loop over image files) -> ``report`` (HTML) -> ``evaluate``
  -> ``tune``, ``pseudo``, ``export`` -> ``deploy`` (which runtime a model runs on) ->
  ``compare``;
* ``cli``: the ``steelseg-*`` commands, thin shells over the above.

Every module is loaded on first use, so ``import steelseg`` is cheap: ``steelseg.predict``
imports torch only when touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: The public modules, in data-path order (see the module docstring).
MODULES = (
    "io",
    "runtime",
    "config",
    "rle",
    "synth",
    "prepare",
    "dataset",
    "losses",
    "metric",
    "checkpoint",
    "callbacks",
    "model",
    "sweep",
    "train",
    "postprocess",
    "submission",
    "draw",
    "predict",
    "report",
    "evaluate",
    "tune",
    "pseudo",
    "export",
    "deploy",
    "compare",
    "cli",
)
__all__ = list(MODULES)

if TYPE_CHECKING:  # pragma: no cover
    from steelseg import (
        callbacks,
        checkpoint,
        cli,
        compare,
        config,
        dataset,
        deploy,
        draw,
        evaluate,
        export,
        io,
        losses,
        metric,
        model,
        postprocess,
        predict,
        prepare,
        pseudo,
        report,
        rle,
        runtime,
        submission,
        sweep,
        synth,
        train,
        tune,
    )


def __getattr__(name: str):
    if name in MODULES:
        return importlib.import_module(f"steelseg.{name}")
    raise AttributeError(f"module 'steelseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(MODULES)
