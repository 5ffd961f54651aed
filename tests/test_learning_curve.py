"""A learning curve: ``data.train_fraction`` subsamples the train split only, and
``steelseg-compare --curve KEY`` plots a metric against a swept key."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import DictConfig, open_dict

from conftest import tiny_overrides
from helpers import data_module, exit_code, run_main
from steelseg.cli.compare import main as compare_main
from steelseg.dataset import SteelDataModule
from steelseg.io import file_digest
from steelseg.train import build


def ids(dm: SteelDataModule, name: str) -> list[str]:
    return dm.datasets[name].ids


def test_train_fraction_subsamples_train_only(tiny_cfg: DictConfig, caplog) -> None:
    full = data_module(tiny_cfg)
    digest = file_digest(full.prepared_dir / "split.csv")
    with caplog.at_level("INFO", logger="steelseg.dataset"):
        part = data_module(tiny_cfg, train_fraction=0.25)
    assert "training on 6 of 24 train images (data.train_fraction=0.25)" in caplog.messages
    assert len(ids(part, "train")) == 6 and set(ids(part, "train")) < set(ids(full, "train"))
    for name in ("val", "test"):
        assert ids(part, name) == ids(full, name)
    assert part.prepared_dir == full.prepared_dir  # the split's folder and digest are unchanged
    assert file_digest(part.prepared_dir / "split.csv") == digest
    assert ids(data_module(tiny_cfg, train_fraction=0.25), "train") == ids(part, "train")  # seeded
    # each stratum (the classes an image shows) keeps its share, +-1
    rows = pd.read_csv(full.prepared_dir / "split.csv", dtype=str, keep_default_na=False)
    key = rows.set_index("ImageId")["classes"]
    whole, sub = key[ids(full, "train")].value_counts(), key[ids(part, "train")].value_counts()
    assert all(abs(sub.get(k, 0) - 0.25 * n) <= 1 for k, n in whole.items())
    assert len(ids(data_module(tiny_cfg, train_fraction=0.01), "train")) == 1  # at least one image


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_train_fraction_outside_0_1_is_refused(tiny_cfg: DictConfig, fraction: float) -> None:
    with open_dict(tiny_cfg):
        tiny_cfg.data.train_fraction = fraction
    with pytest.raises(ValueError, match=r"data.train_fraction=.* must be in \(0, 1\]"):
        build(tiny_cfg.data)


def fake_run(folder: Path, fraction: float | None, train: int, val_iou: float, test_iou: float):
    """A finished run folder as ``steelseg-train -m data.train_fraction=...`` leaves it."""
    (folder / ".hydra").mkdir(parents=True)
    data = {} if fraction is None else {"train_fraction": fraction}
    (folder / "config.yaml").write_text(json.dumps({"data": data, "optimized_metric": "val/iou"}))
    overrides = [] if fraction is None else [f"data.train_fraction={fraction}"]
    (folder / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
    report = {
        "metrics": {"val/iou": val_iou, "test/iou": test_iou},
        "split_sizes": {"train": train},
    }
    (folder / "metrics.json").write_text(json.dumps(report))


def test_compare_curve_writes_a_table_and_a_png(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    runs = [(1.0, 24, 0.5, 0.45), (0.1, 2, 0.2, 0.15), (0.5, 12, 0.4, 0.35), (0.25, 6, 0.3, 0.2)]
    for job, run in enumerate(runs):
        fake_run(sweep / str(job), *run)
    (sweep / "4" / ".hydra").mkdir(parents=True)  # a job that failed is left out
    (sweep / "4" / "failed.json").write_text(json.dumps({"last_line": "boom"}))
    fake_run(sweep / "5", None, 24, 0.7, 0.65)  # a run from before the key: left out

    assert exit_code(compare_main, [sweep, "--curve", "data.train_fraction"]) == 0
    assert (
        "| data.train_fraction | runs | train images | val IoU | test IoU |"
        in capsys.readouterr().out
    )
    table = pd.read_csv(sweep / "curve.csv")
    assert table["data.train_fraction"].tolist() == [0.1, 0.25, 0.5, 1.0]  # sorted by x
    assert table["train_images"].tolist() == [2, 6, 12, 24]
    assert table["val/iou"].tolist() == [0.2, 0.3, 0.4, 0.5]
    assert table["test/iou"].tolist() == [0.15, 0.2, 0.35, 0.45]
    assert "| 0.25 | 1 | 6 | 0.3000 | 0.2000 |" in (sweep / "curve.md").read_text()
    assert (sweep / "curve.png").read_bytes()[:4] == b"\x89PNG"

    fake_run(sweep / "6", 0.1, 2, 0.4, 0.25)  # a second seed at 10%: the mean of both
    assert exit_code(compare_main, [sweep, "--curve", "data.train_fraction"]) == 0
    first = pd.read_csv(sweep / "curve.csv").iloc[0]
    assert first["runs"] == 2 and first["val/iou"] == pytest.approx(0.3)


def test_compare_curve_of_a_key_no_run_has_fails_in_one_line(tmp_path: Path, capsys) -> None:
    fake_run(tmp_path / "0", 0.5, 12, 0.4, 0.3)
    assert exit_code(compare_main, [tmp_path, "--curve", "data.nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steelseg-compare: error: --curve data.nope:") and "\n" not in err


def test_one_sweep_command_writes_the_curve(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/sweeps.md's learning-curve command, shrunk: two tiny jobs, then curve.*."""
    args = [
        "-m",
        *tiny_overrides(synth_root, "data.train_fraction=0.5,1"),
        f"data.prepared_dir={tmp_path / 'prepared'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.callbacks.summary.curve=data.train_fraction",
    ]
    assert run_main("steelseg-train", args, monkeypatch) == 0
    table = pd.read_csv(tmp_path / "sweep" / "curve.csv")
    assert table["data.train_fraction"].tolist() == [0.5, 1.0]
    assert table["train_images"].tolist() == [12, 24] and table["val/iou"].notna().all()
    assert (tmp_path / "sweep" / "curve.png").read_bytes()[:4] == b"\x89PNG"
