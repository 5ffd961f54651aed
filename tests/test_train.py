"""End-to-end: train(cfg) on tiny synthetic data, the CLI, resume, lr_find, bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from conftest import tiny_overrides
from helpers import run_main
from steelseg import config
from steelseg.model import SteelSegModule
from steelseg.train import train


def test_train_writes_metrics_and_checkpoints(tiny_cfg):
    metrics = train(tiny_cfg)
    out = Path(tiny_cfg.paths.output_dir)
    report = json.loads((out / "metrics.json").read_text())
    for key in ("val/iou", "val/dice", "val/dice_per_image", "test/iou", "test/loss"):
        assert metrics[key] >= 0.0 and key in report["metrics"], key
    assert metrics["epochs"] == 1 and metrics["params"] > 0 and metrics["fit_seconds"] > 0
    assert report["checkpoint"]["best"].endswith(".ckpt")
    assert Path(report["checkpoint"]["best"]).exists() and (out / "checkpoints/last.ckpt").exists()
    assert report["split_sizes"] == {"train": 24, "val": 3, "test": 3}
    assert (out / "config.yaml").read_text().count("encoder_name: tu-mobilenetv3_small_100") == 1
    assert (out / "csv" / "metrics.csv").exists()


def test_best_checkpoint_loads_without_hydra(tiny_cfg):
    train(tiny_cfg)
    ckpt = json.loads((Path(tiny_cfg.paths.output_dir) / "metrics.json").read_text())
    module = SteelSegModule.load_from_checkpoint(ckpt["checkpoint"]["best"], map_location="cpu")
    assert module.hparams.arch == "fpn" and module.hparams.loss == {"dice": 1.0}
    x = torch.randint(0, 255, (1, 1, 64, 320), dtype=torch.uint8)
    assert module.eval()(x).shape == (1, 1, 64, 320)


def test_resume_from_last_checkpoint(tiny_cfg, tmp_path):
    train(tiny_cfg)
    last = Path(tiny_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with open_dict(tiny_cfg):
        tiny_cfg.ckpt_path = str(last)
        tiny_cfg.trainer.max_epochs = 2
        tiny_cfg.paths.output_dir = str(tmp_path / "resumed")
    metrics = train(tiny_cfg)
    assert metrics["epochs"] == 2  # one more epoch on top of the restored one


def test_lr_find_saves_plot_and_suggestion(tiny_cfg):
    with open_dict(tiny_cfg):
        tiny_cfg.lr_find = True
        tiny_cfg.test = False
    train(tiny_cfg)
    out = Path(tiny_cfg.paths.output_dir)
    found = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").stat().st_size > 1000
    assert len(found["lr"]) == len(found["loss"]) >= 2  # one point per step; 2 batches here
    assert found["lr"] == sorted(found["lr"]) and found["applied"] is False


def test_image_size_not_multiple_of_32_is_rejected(synth_root, tmp_path):
    cfg = config.compose(tiny_overrides(synth_root, "data.height=250"), output_dir=tmp_path)
    with pytest.raises(
        ValueError, match=r"data.height=250 must be a positive multiple of 32.*224 or 256"
    ):
        train(cfg)


def test_empty_train_split_fails_before_training(tiny_cfg, tmp_path):
    prepared = Path(tiny_cfg.data.prepared_dir)
    from hydra.utils import instantiate

    instantiate(tiny_cfg.data).prepare_data()
    split = pd.read_csv(prepared / "split.csv", keep_default_na=False)
    split.loc[split["split"] == "train", "split"] = "val"
    split.to_csv(prepared / "split.csv", index=False)
    with pytest.raises(ValueError, match="no training images"):
        train(tiny_cfg)
    assert not (Path(tiny_cfg.paths.output_dir) / "metrics.json").exists()


def test_split_without_test_images_trains_and_says_so(tiny_cfg, caplog):
    """A split whose test share rounds to 0 (a handful of images) trains and validates;
    there is no test/* number, and the log says why."""
    from hydra.utils import instantiate

    instantiate(tiny_cfg.data).prepare_data()
    split_csv = Path(tiny_cfg.data.prepared_dir) / "split.csv"
    split = pd.read_csv(split_csv, keep_default_na=False)
    split.loc[split["split"] == "test", "split"] = "train"
    split.to_csv(split_csv, index=False)
    metrics = train(tiny_cfg)
    assert "val/iou" in metrics and not any(k.startswith("test/") for k in metrics)
    assert "the split has no test images" in caplog.text


def test_split_that_does_not_match_the_data_fails(tiny_cfg):
    from hydra.utils import instantiate

    instantiate(tiny_cfg.data).prepare_data()
    split_csv = Path(tiny_cfg.data.prepared_dir) / "split.csv"
    split = pd.read_csv(split_csv, keep_default_na=False)
    split.loc[0, "ImageId"] = "0000notthere.jpg"
    split.to_csv(split_csv, index=False)
    with pytest.raises(ValueError, match="0000notthere.jpg"):
        train(tiny_cfg)


def test_cli_runs_and_reports_unknown_choices(synth_root, tmp_path, monkeypatch, capsys):
    """The console script's main, in-process (a new interpreter: tests/test_commands.py)."""
    args = [
        *tiny_overrides(synth_root),
        f"data.prepared_dir={tmp_path / 'prepared'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "test=false",
    ]
    assert run_main("steelseg-train", args, monkeypatch) == 0, capsys.readouterr().err[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["val/iou"] >= 0
    assert run_main("steelseg-train", ["model=fpnn"], monkeypatch) != 0
    err = capsys.readouterr().err
    assert "Available options in 'model'" in err and "unetplusplus" in err
