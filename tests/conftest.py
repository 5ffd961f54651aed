"""Shared fixtures: tiny synthetic data and the real config, composed and shrunk."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, open_dict

from steelseg import config, synth

# Tests run on 2-core machines: one intra-op thread per test process keeps timings steady.
torch.set_num_threads(1)

# absl.logging (imported by openvino) keeps the sys.stderr of its import, which under pytest is
# pytest's capture stream, and closes it when logging is configured again (Hydra does, in
# process), breaking every later test of the worker. Point it at the real stderr.
try:
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__
except ImportError:  # no openvino here
    pass


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic Kaggle-layout folder (train.csv, train_images/, test_images/)."""
    root = tmp_path_factory.mktemp("synthetic")
    synth.generate(root, n_images=30, seed=1, n_test=3, progress=False)
    return root


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    """Overrides that shrink the real config to seconds on a CPU."""
    return [
        "encoder=mobilenetv3_small",
        "model.encoder_weights=null",
        "model.in_channels=1",
        "+model.arch_kwargs.decoder_pyramid_channels=32",
        "+model.arch_kwargs.decoder_segmentation_channels=32",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "+trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        f"data.root={root}",
        "data.synthetic=null",
        "data.height=64",
        "data.width=320",
        "data.batch_size=4",
        "data.num_workers=0",
        *extra,
    ]


@pytest.fixture
def tiny_cfg(synth_root: Path, tmp_path: Path) -> DictConfig:
    """The real ``train`` config shrunk to a 2-batch CPU run writing into ``tmp_path``."""
    cfg = config.compose(tiny_overrides(synth_root), output_dir=tmp_path / "run")
    with open_dict(cfg):
        cfg.data.prepared_dir = str(tmp_path / "prepared")
    return cfg


@pytest.fixture(scope="session")
def tiny_ckpt(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a tiny model (1 input channel, trained 2 batches at 64x320).

    Shared read-only by the inference, evaluation and export tests; never modify it.
    """
    from steelseg.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = config.compose(tiny_overrides(synth_root, "test=false"), output_dir=out / "run")
    with open_dict(cfg):
        cfg.data.prepared_dir = str(out / "prepared")
    train(cfg)
    return out / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def tiny_ckpt_4gate(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a tiny 4-class model with the gate head (``model.classes=4
    model.gate=true``), trained 2 batches on 64x320 native-resolution crops, so it has no
    ``input_size``: prediction runs whole images, padded to the stride.

    Shared read-only by the per-class inference and export tests; never modify it.
    """
    from steelseg.train import train

    out = tmp_path_factory.mktemp("tiny_4gate_run")
    extra = ("test=false", "model.classes=4", "model.gate=true", "data.crop=64x320")
    cfg = config.compose(tiny_overrides(synth_root, *extra), output_dir=out / "run")
    with open_dict(cfg):
        cfg.data.prepared_dir = str(out / "prepared")
    train(cfg)
    return out / "run" / "checkpoints" / "last.ckpt"
