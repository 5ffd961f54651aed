"""Every console script, run for real in its own process on a tiny trained model.

The fast suite runs each command's ``main()`` in-process (the same code, a real run, seconds);
these start the installed scripts themselves, as a user does, so a broken entry point or an
import that only fails in a fresh interpreter shows up. Each new interpreter imports torch, smp
and Lightning (8-10 s on a 2-core machine), so they are slow-marked; steelseg-prepare and
-synth run as scripts in the fast suite too (test_bad_inputs.py, test_shared.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def script(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def run(name: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [script(name), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=300,
    )  # fmt: skip


@pytest.fixture
def run_copy(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model's run folder (config.yaml, checkpoints/), free to write into."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_ckpt.parent.parent, run_dir)
    return run_dir


def test_tune_then_eval(run_copy: Path, tmp_path: Path) -> None:
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    tuned = run("steelseg-tune", ckpt, "--thresholds", "0.3,0.5", "--min-component-areas", "0",
                "--min-total-areas", "0,500", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert (run_copy / "checkpoints" / "last.postprocess.json").is_file()
    done = run("steelseg-eval", ckpt, "--split", "val", "--panels", "2", "--no-progress",
               "--out", tmp_path / "eval", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["tuned_sidecar"] and result["n_images"] > 0
    assert (tmp_path / "eval" / "report.html").is_file()


def test_predict_and_pseudo(run_copy: Path, synth_root: Path, tmp_path: Path) -> None:
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    images = sorted((synth_root / "train_images").iterdir())[:2]
    done = run("steelseg-predict", ckpt, *images, "--out", tmp_path / "p", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "p" / "panels").iterdir())) == 2  # ground truth: train.csv
    done = run("steelseg-pseudo", ckpt, synth_root / "test_images", "--out", tmp_path / "ps",
               "--max-uncertain", "1", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "ps" / "pseudo.json").read_text())["kept"] == 3


def test_export_and_compare(run_copy: Path, tmp_path: Path) -> None:
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    done = run("steelseg-export", ckpt, "--format", "torchscript", "--out", tmp_path / "m.pt",
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "m.pt.json").read_text())["max_abs_diff"] < 1e-3
    done = run("steelseg-compare", run_copy, "--out", tmp_path / "cmp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cmp" / "summary.csv").is_file()


def test_train(synth_root: Path, tmp_path: Path) -> None:
    from conftest import tiny_overrides

    done = run("steelseg-train", *tiny_overrides(synth_root), f"data.prepared_dir={tmp_path / 'p'}",
               f"hydra.run.dir={tmp_path / 'run'}", "test=false", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["val/iou"] >= 0
