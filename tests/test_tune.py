"""steelseg.tune: exact grid scores, the known best on a constructed case, and the sidecar.

The sidecar tests copy the shared tiny run (checkpoint + config.yaml) into ``tmp_path`` first:
the shared checkpoint's folder must never get a sidecar.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import exit_code, tune_ckpt
from steelseg.cli.tune import main
from steelseg.postprocess import PostProcess, load_tuned, sidecar_path
from steelseg.predict import Predictor
from steelseg.tune import Grid, GridScorer, rank


def per_image_dice(pred: np.ndarray, target: np.ndarray) -> float:
    tp = np.count_nonzero(pred & target)
    den = np.count_nonzero(pred) + np.count_nonzero(target)
    return 1.0 if den == 0 else 2 * tp / den


def blobs(seed: int, n: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Smooth random probability maps (blobs of many sizes) and ground truths."""
    rng = np.random.default_rng(seed)
    import cv2

    probs, targets = [], []
    for _ in range(n):
        p = cv2.GaussianBlur(rng.random((40, 90)).astype(np.float32), (0, 0), 2.0)
        p = (p - p.min()) / (p.max() - p.min())
        probs.append(p)
        targets.append(cv2.GaussianBlur(rng.random((40, 90)), (0, 0), 2.5) > 0.55)
    targets[1][:] = False  # a clean image
    return probs, targets


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize(
    "base", [PostProcess(), PostProcess(close=3, dilate=2, fill_holes=True)], ids=["plain", "morph"]
)
def test_grid_scores_equal_postprocess_apply(base: PostProcess) -> None:
    probs, targets = blobs(0)
    grid = Grid([0.3, 0.5, 0.7], [0, 5, 20, 60], [0, 30, 150, 400])
    scorer = GridScorer(grid, base)
    for p, t in zip(probs, targets):
        scorer.add(p, t)
    rows = {
        (r["threshold"], r["min_component_area"], r["min_total_area"]): r for r in scorer.rows()
    }
    assert len(rows) == 3 * 4 * 4
    for t, a, m in itertools.product(*grid.to_dict().values()):
        pp = PostProcess(t, a, m, base.dilate, base.close, base.fill_holes)
        preds = [pp.apply(p) for p in probs]
        want = np.mean([per_image_dice(q, g) for q, g in zip(preds, targets)])
        tp = sum(np.count_nonzero(q & g) for q, g in zip(preds, targets))
        union = sum(np.count_nonzero(q | g) for q, g in zip(preds, targets))
        assert rows[(t, a, m)]["dice_per_image"] == pytest.approx(want, abs=1e-12), (t, a, m)
        assert rows[(t, a, m)]["iou"] == pytest.approx(tp / union if union else 1.0), (t, a, m)


# ----------------------------------------------------------------------------- known best
def constructed_case() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Five 64x160 images whose only perfect setting is threshold 0.55, min component area 25,
    min total area 50 on the grid of :func:`test_tuning_picks_the_known_best`:

    * A: an 800-px defect (prob 0.7) and a 20-px false alarm (0.95): component area > 20.
    * E: two true 30-px defects (0.9): component area <= 30 and total area <= 60.
    * B: clean, one 45-px false alarm (0.8): with components >= 45 kept, total area > 45.
    * C: a 600-px defect at probability 0.58: threshold <= 0.58.
    * D: clean, a 700-px false alarm at 0.53: threshold > 0.53.
    """
    probs, targets = [], []

    def image() -> tuple[np.ndarray, np.ndarray]:
        p, t = np.full((64, 160), 0.1, np.float32), np.zeros((64, 160), bool)
        probs.append(p)
        targets.append(t)
        return p, t

    p, t = image()  # A
    p[5:25, 5:45] = 0.7
    t[5:25, 5:45] = True
    p[40:44, 100:105] = 0.95
    p, t = image()  # E
    p[5:10, 5:11] = p[40:45, 100:106] = 0.9
    t[5:10, 5:11] = t[40:45, 100:106] = True
    p, _ = image()  # B
    p[30:35, 50:59] = 0.8
    p, t = image()  # C
    p[10:30, 60:90] = 0.58
    t[10:30, 60:90] = True
    p, _ = image()  # D
    p[20:40, 20:55] = 0.53
    return probs, targets


def test_tuning_picks_the_known_best() -> None:
    probs, targets = constructed_case()
    grid = Grid([0.5, 0.55, 0.6], [0, 10, 25, 40], [0, 40, 50, 100])
    scorer = GridScorer(grid)
    for p, t in zip(probs, targets):
        scorer.add(p, t)
    rows = rank(scorer.rows(), prefer_threshold=0.5)
    best, runner_up = rows[0], rows[1]
    assert (best["threshold"], best["min_component_area"], best["min_total_area"]) == (0.55, 25, 50)
    assert best["dice_per_image"] == 1.0 and best["iou"] == 1.0
    assert runner_up["dice_per_image"] < 1.0  # the best is the only perfect setting


def test_rank_breaks_ties_towards_the_simpler_setting() -> None:
    rows = [
        {"threshold": 0.6, "min_component_area": 0, "min_total_area": 0, "tta": [], "dice_per_image": 0.8},
        {"threshold": 0.5, "min_component_area": 0, "min_total_area": 100, "tta": [], "dice_per_image": 0.8},
        {"threshold": 0.5, "min_component_area": 0, "min_total_area": 0, "tta": ["hflip"], "dice_per_image": 0.8},
        {"threshold": 0.5, "min_component_area": 0, "min_total_area": 0, "tta": [], "dice_per_image": 0.8},
        {"threshold": 0.3, "min_component_area": 9, "min_total_area": 9, "tta": [], "dice_per_image": 0.81},
    ]  # fmt: skip
    order = [rows.index(r) for r in rank(rows, prefer_threshold=0.5)]
    assert order == [4, 3, 0, 1, 2]


def test_grid_validation() -> None:
    assert Grid([0.5, 0.3, 0.5], [10, 0], [0]).thresholds == (0.3, 0.5)
    with pytest.raises(ValueError, match="thresholds"):
        Grid([0.0, 0.5])
    with pytest.raises(ValueError, match="min_total_areas"):
        Grid([0.5], [0], [-1])
    assert Grid([0.4], [5], [7]).including(0.5) == Grid([0.4, 0.5], [0, 5], [0, 7])


# ----------------------------------------------------------------------------- sidecar
@pytest.fixture
def own_ckpt(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run folder (its config.yaml finds the data and split)."""
    run = tmp_path / "run"
    shutil.copytree(
        tiny_ckpt.parent.parent, run, ignore=shutil.ignore_patterns("*.postprocess.json")
    )
    return run / "checkpoints" / tiny_ckpt.name


def test_tune_writes_the_sidecar_that_predict_uses(own_ckpt: Path) -> None:
    grid = Grid([0.4, 0.6], [0, 100], [0, 2000])
    result = tune_ckpt(own_ckpt, "val", grid=grid, progress=False)
    assert result.sidecar == sidecar_path(own_ckpt) and result.sidecar.is_file()
    assert result.score >= result.baseline  # the plain model is among the candidates
    assert result.score == result.rows[0]["dice_per_image"]
    # 3 thresholds (0.5 added) x 2 x 2 settings scored, no TTA
    assert len(result.rows) == 12 and all(r["tta"] == [] for r in result.rows)
    stored = json.loads(result.sidecar.read_text())
    assert stored["tuned_on"]["split"] == "val" and stored["metric"] == "dice_per_image"
    assert stored["score"] == pytest.approx(result.score)
    assert load_tuned(own_ckpt) == (result.postprocess, ())
    predictor = Predictor.from_checkpoint(own_ckpt, device="cpu")
    assert predictor.postprocess == result.postprocess
    assert Predictor.from_checkpoint(own_ckpt, device="cpu", use_tuned=False).postprocess == (
        PostProcess(threshold=0.5)
    )


def test_tune_cli(own_ckpt: Path, capsys) -> None:
    argv = [str(own_ckpt), "--thresholds", "0.5", "--min-component-areas", "0",
            "--min-total-areas", "0,409601", "--tta", "--no-progress", "--top", "3"]  # fmt: skip
    assert main([*argv, "--no-save"]) == 0
    assert not sidecar_path(own_ckpt).exists()
    out = capsys.readouterr().out
    assert "hflip+vflip" in out and "chosen:" in out
    assert main(argv) == 0
    tuned_pp, tta = load_tuned(own_ckpt)
    assert tuned_pp.threshold == 0.5 and tuned_pp.min_component_area == 0
    assert tta in ((), ("hflip", "vflip"))
    stored = json.loads(sidecar_path(own_ckpt).read_text())
    assert stored["grid"]["tta"] == [[], ["hflip", "vflip"]]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["{missing}"], "does not exist"),
        (["{ckpt}", "--split", "nope"], "invalid choice: 'nope'"),
        (["{ckpt}", "--thresholds", "0,0.5"], "thresholds"),
    ],
)
def test_tune_cli_bad_input(own_ckpt: Path, tmp_path: Path, capsys, args, match) -> None:
    fill = {"ckpt": str(own_ckpt), "missing": str(tmp_path / "missing.ckpt")}
    assert exit_code(main, [a.format(**fill) for a in args] + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steelseg-tune: error:") and match in err and len(err.splitlines()) == 1
    assert not sidecar_path(own_ckpt).exists()
