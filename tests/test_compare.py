"""Sweep summaries: a real 2x2 multirun writes summary.csv/md/png; steelseg-compare rebuilds it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_overrides
from helpers import exit_code, run_main
from steelseg import compare, sweep
from steelseg.cli.compare import main as compare_main

# Two architectures x two tiny timm encoders; Unet takes no FPN decoder sizes.
ARCHS = "model=unet,fpn"
ENCODERS = "model.encoder_name=tu-mobilenetv3_small_100,tu-mobilenetv3_small_050"


@pytest.fixture(scope="module")
def sweep_2x2(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep folder of a real 2x2 multirun (model x encoder) of tiny one-epoch jobs.

    Run in-process through the console script's main (Hydra's basic launcher runs the jobs one
    after the other in this process), so no new interpreter has to import torch again.
    """
    tmp = tmp_path_factory.mktemp("sweep_2x2")
    overrides = [o for o in tiny_overrides(synth_root) if "arch_kwargs" not in o]
    args = [
        "-m",
        *overrides,
        f"data.prepared_dir={tmp / 'prepared'}",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        ARCHS,
        ENCODERS,
    ]
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert run_main("steelseg-train", args, monkeypatch) == 0
    return tmp / "sweep"


def test_multirun_writes_a_summary_with_one_row_per_job(sweep_2x2: Path) -> None:
    table = pd.read_csv(sweep_2x2 / "summary.csv")
    assert len(table) == 4 and set(table["status"]) == {"ok"}
    assert set(zip(table["arch"], table["encoder"])) == {
        (a, e)
        for a in ("unet", "fpn")
        for e in ("tu-mobilenetv3_small_100", "tu-mobilenetv3_small_050")
    }
    assert sorted(table["job"]) == [0, 1, 2, 3]
    assert table["val/iou"].is_monotonic_decreasing  # sorted by the optimised metric
    for column in ("val/dice", "test/iou", "test/dice", "test/dice_per_image", "params"):
        assert table[column].notna().all(), column
    assert (table["epochs"] == 1).all() and (table["train_images_per_s"] > 0).all()
    assert (table["job_seconds"] >= table["fit_seconds"]).all()  # start to end of the job
    # each row names what sets it apart; the shared tiny overrides are listed once in the .md
    assert all(c.startswith("model=") and "model.encoder_name=" in c for c in table["changes"])
    for _, row in table.iterrows():
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())["metrics"]
        assert row["val/iou"] == pytest.approx(metrics["val/iou"])
    md = (sweep_2x2 / "summary.md").read_text()
    assert md.count("| ok |") == 4 and "Overrides of every run" in md
    assert (sweep_2x2 / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_lists_a_failed_run_and_still_shows_the_others(
    sweep_2x2: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(sweep_2x2, runs, ignore=shutil.ignore_patterns("checkpoints", "summary.*"))
    (runs / "2" / "metrics.json").unlink()  # job 2 failed instead of ending
    try:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")
    except RuntimeError as e:
        sweep.record_failure(runs / "2", e)
    shutil.rmtree(runs / "3")
    (runs / "3").mkdir()  # job 3 never got past its config
    (runs / "3" / "config.yaml").write_text("optimized_metric: val/iou\n")

    assert exit_code(compare_main, [runs]) == 0

    printed = capsys.readouterr().out
    assert "RuntimeError: Tried to allocate 2.00 GiB" in printed  # the error's last line
    table = pd.read_csv(runs / "summary.csv", keep_default_na=False)
    assert table["status"].tolist() == ["ok", "ok", "failed", "incomplete"]  # ended runs first
    assert table["job"].tolist()[2:] == [2, 3]
    assert table.loc[2, "error"] == "RuntimeError: Tried to allocate 2.00 GiB"
    assert "model=" in table.loc[2, "changes"]  # the failed job still says what it was
    assert (runs / "summary.md").read_text().count("| ok |") == 2


def test_compare_run_folders_anywhere_write_into_their_common_folder(
    sweep_2x2: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "report"
    assert exit_code(compare_main, [sweep_2x2 / "0", sweep_2x2 / "3", "--out", out]) == 0
    table = pd.read_csv(out / "summary.csv")
    assert sorted(table["job"]) == [0, 3]
    assert {p.name for p in out.iterdir()} == {"summary.csv", "summary.md", "summary.png"}
    assert exit_code(compare_main, [sweep_2x2 / "1", "--metric", "test/iou"]) == 0
    assert "Sorted by test/iou" in capsys.readouterr().out
    assert (sweep_2x2 / "1" / "summary.md").exists()


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_compare_without_runs_fails_with_a_clear_message(
    make: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "nothing"
    if make == "empty":
        (folder / "sub").mkdir(parents=True)
    assert exit_code(compare_main, [folder]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("steelseg-compare: error: ") and str(folder) in message
    assert ("no runs found" if make == "empty" else "is not a folder") in message
    assert not (folder / "summary.csv").exists()


def test_losses_sort_lowest_first(tmp_path: Path) -> None:
    for job, loss in enumerate([0.3, 0.1, 0.2]):
        run = tmp_path / str(job)
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"metrics": {"val/loss": loss}}))
    table, metric = compare.collect([tmp_path], "val/loss")
    assert metric == "val/loss" and table["val/loss"].tolist() == [0.1, 0.2, 0.3]


def test_compare_shows_each_runs_test_evaluation(tmp_path: Path) -> None:
    """steelseg-eval's numbers (tuned and threshold-only) join the run's row."""
    metrics = {"postprocessed": {}, "threshold_only": {}}
    for variant, base in (("postprocessed", 0.8), ("threshold_only", 0.7)):
        metrics[variant] = {
            "pixel": {"iou": base - 0.2, "dice_per_image": base},
            "image": {"specificity": base + 0.1},
            "defect": {"recall": 0.5, "small_recall": 0.25},
            "kaggle_dice": base + 0.05,
        }
    for name, with_eval in (("a", True), ("b", False)):
        run = tmp_path / name
        (run / "eval" / "best-test").mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"metrics": {"val/iou": 0.3}}))
        if with_eval:
            (run / "eval" / "best-test" / "eval.json").write_text(json.dumps({"metrics": metrics}))
    table, _ = compare.collect([tmp_path])
    a = table.set_index("job").loc["a"]
    assert a["eval/dice_per_image"] == 0.8 and a["eval_plain/dice_per_image"] == 0.7
    assert a["eval/small_defect_recall"] == 0.25 and a["eval/kaggle_dice"] == pytest.approx(0.85)
    assert pd.isna(table.set_index("job").loc["b", "eval/iou"])
    md = compare.to_markdown(table, "val/iou")
    assert "eval recall <2000 px" in md and "threshold-only Kaggle" in md
    assert len(table) == 2  # eval/ folders are not runs
