"""steelseg: segmentation of steel surface defects (Kaggle Severstal and folder layouts).

Modules follow the data path, and none imports one further along it:

* ``io`` (atomic writes, reading images), ``runtime`` (PyTorch / ONNX Runtime / OpenVINO
  engines, no torch needed), ``config`` (Hydra configs, compose);
* ``rle`` (Kaggle run-length encoding, train.csv), ``coco`` (COCO masks and polygons) ->
  ``surface`` (defect-free steel and its nuisances) -> ``synth`` (synthetic data in the Kaggle
  layout) -> ``layouts`` (the Kaggle and folder layouts, their labels and class names) ->
  ``labelimport`` (labelling tools' exports into the folder layout) -> ``duplicates``
  (near-duplicate images, split leaks) -> ``cache`` (the uint8 cache of a split) ->
  ``prepare`` (stratified split, the prepared folder) -> ``dataset`` (Dataset,
  LightningDataModule);
* ``losses``, ``metric`` (IoU, Dice, per-image Dice, detection; numpy, no torch) ->
  ``segmetrics`` (the training metric, torchmetrics) -> ``checkpoint`` (atomic, weights-only
  checkpoint files) -> ``callbacks`` -> ``model`` (LightningModule) -> ``sweep`` -> ``train``
  (fit, validate, test);
* ``postprocess`` (thresholds, areas, the gate, the stored settings) -> ``inputs`` (which
  images to predict) -> ``submission`` (Kaggle submission CSV) -> ``draw`` (overlays) ->
  ``labelled`` (a run's labelled images and their masks) -> ``predict`` (the Predictor, the
  one loop over image files) -> ``writer`` (predictions into a folder) -> ``review`` (the
  most uncertain images as a labelling task) -> ``accuracy`` (a
  predictor against PyTorch fp32 on labelled images) -> ``report`` (HTML) -> ``realism``
  (synthetic strips against real ones) -> ``datareport`` (the data report) -> ``evaluate`` ->
  ``tune``, ``pseudo``, ``export`` -> ``deploy`` (``load_predictor``, the one way in to a
  model; the runtime choice) -> ``distributed`` (the same model as Ray Data actors) ->
  ``compare`` -> ``serve`` (HTTP on Ray Serve);
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
    "coco",
    "surface",
    "synth",
    "layouts",
    "labelimport",
    "duplicates",
    "cache",
    "prepare",
    "dataset",
    "losses",
    "metric",
    "segmetrics",
    "checkpoint",
    "callbacks",
    "model",
    "sweep",
    "train",
    "postprocess",
    "inputs",
    "submission",
    "draw",
    "labelled",
    "predict",
    "writer",
    "review",
    "accuracy",
    "report",
    "realism",
    "datareport",
    "evaluate",
    "tune",
    "pseudo",
    "export",
    "deploy",
    "distributed",
    "compare",
    "serve",
    "cli",
)
__all__ = list(MODULES)

if TYPE_CHECKING:  # pragma: no cover
    from steelseg import (
        cache,
        callbacks,
        checkpoint,
        cli,
        coco,
        compare,
        config,
        datareport,
        dataset,
        deploy,
        distributed,
        draw,
        duplicates,
        evaluate,
        export,
        inputs,
        io,
        labelimport,
        labelled,
        layouts,
        losses,
        metric,
        model,
        postprocess,
        predict,
        prepare,
        pseudo,
        realism,
        report,
        review,
        rle,
        runtime,
        segmetrics,
        serve,
        submission,
        surface,
        sweep,
        synth,
        train,
        tune,
        writer,
    )


def __getattr__(name: str):
    if name in MODULES:
        return importlib.import_module(f"steelseg.{name}")
    raise AttributeError(f"module 'steelseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(MODULES)
