"""``steelseg-predict --engine ray``: the same Predictor as Ray Data actors writes what a local
run writes (steelseg.distributed); Ray stays an optional extra that a local run never imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from steelseg.cli.predict import main
from steelseg.io import read_grey

#: predict.json's timings, which differ between any two runs
TIMINGS = ("seconds", "images_per_second")


def run_cli(*argv: object) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        return e.code


@pytest.fixture(scope="module")
def plant(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder layout of 7 synthetic steel crops in two sizes (5 with a mask beside them, so
    they get panels) and one unreadable file."""
    root = tmp_path_factory.mktemp("plant")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    strips = sorted((synth_root / "train_images").iterdir())
    rng = np.random.default_rng(0)
    for i, strip in enumerate(strips[:7]):
        h, w = (64, 320) if i % 3 else (96, 400)  # two sizes: batches of mixed shapes
        x = 200 * i
        cv2.imwrite(str(root / "images" / f"crop{i}.png"), read_grey(strip)[:h, x : x + w])
        if i < 5:
            mask = np.zeros((h, w), np.uint8)
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            mask[y0 : y0 + 20, x0 : x0 + 60] = 255
            cv2.imwrite(str(root / "masks" / f"crop{i}.png"), mask)
    (root / "images" / "junk.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray on 2 CPUs for the module (start-up takes seconds)."""
    ray = pytest.importorskip("ray")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


def summary(folder: Path) -> dict:
    """predict.json without its timings, the output folder named OUT."""
    found = json.loads((folder / "predict.json").read_text().replace(str(folder), "OUT"))
    return {k: v for k, v in found.items() if k not in TIMINGS}


@pytest.mark.slow
@pytest.mark.parametrize("review", [False, True], ids=["predict", "review"])
def test_ray_engine_writes_what_a_local_run_writes(tiny_ckpt, plant, ray_session, tmp_path, review):
    """Masks, overlays, panels, predictions.csv, predictions.coco.json and predict.json (minus
    timings) are byte for byte a local run's; with --review also scores.csv and the task."""
    common = [tiny_ckpt, plant, "--runtime", "torch", "--batch-size", "3", "--no-progress"]
    common += ["--review", "2"] if review else []
    assert run_cli(*common, "--out", tmp_path / "local") == 3  # junk.png skipped
    assert run_cli(*common, "--out", tmp_path / "ray", "--engine", "ray", "--actors", "2") == 3
    local, remote = files(tmp_path / "local"), files(tmp_path / "ray")
    assert sorted(local) == sorted(remote)
    masks = sorted(k for k in local if k.startswith("masks/"))
    assert len(masks) == 7 and len([k for k in local if k.startswith("panels/")]) == 5
    assert any(cv2.imread(str(tmp_path / "local" / m), cv2.IMREAD_UNCHANGED).any() for m in masks)
    differ = [k for k in local if k != "predict.json" and local[k] != remote[k]]
    assert differ == []
    assert summary(tmp_path / "ray") == summary(tmp_path / "local")
    assert list(summary(tmp_path / "ray")["skipped"]) == [str(plant / "images" / "junk.png")]
    assert ("review/review.csv" in local) == review


def test_engine_ray_without_ray_is_one_line(monkeypatch, plant, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    code = run_cli(tmp_path / "model.ckpt", plant, "--out", tmp_path / "o", "--engine", "ray")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("steelseg-predict: error: --engine ray needs Ray")
    assert "pip install 'steelseg[ray]'" in err[0]
    assert not (tmp_path / "o").exists()


def test_ray_options_need_the_ray_engine(plant, tmp_path, capsys):
    code = run_cli(tmp_path / "m.ckpt", plant, "--out", tmp_path / "o", "--address", "auto")
    assert code == 2
    assert "--address and --actors need --engine ray" in capsys.readouterr().err


def test_a_local_run_never_imports_ray(tiny_ckpt, plant, tmp_path):
    """``import steelseg``, the predictor, the writer, the engine module and a whole local run."""
    code = "\n".join(
        [
            "import sys, steelseg, steelseg.predict, steelseg.writer, steelseg.distributed",
            "from steelseg.cli.predict import main",
            f"code = main([{str(tiny_ckpt)!r}, {str(plant)!r}, '--out', "
            f"{str(tmp_path / 'out')!r}, '--runtime', 'torch', '--no-progress'])",
            "print(code, sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1].split() == ["3", "[]"]  # 3: junk.png skipped
    assert (tmp_path / "out" / "predictions.csv").is_file()


@pytest.mark.slow
def test_an_actor_that_cannot_load_the_model_says_why(tiny_ckpt, plant, ray_session, tmp_path):
    """A model path that a Ray node cannot read ends the run with one line, not a trace."""
    from steelseg.deploy import load_predictor
    from steelseg.distributed import RayEngine
    from steelseg.inputs import collect_inputs
    from steelseg.writer import predict_to_folder

    predictor = load_predictor(tiny_ckpt, "torch")
    engine = RayEngine(tmp_path / "elsewhere.ckpt", actors=1)  # not there on the "node"
    sources = collect_inputs([plant])[0]
    with pytest.raises(ValueError, match=r"a Ray actor died: FileNotFoundError: model file .*"):
        predict_to_folder(
            predictor, sources, tmp_path / "out", progress=False, predict_files=engine.predict_files
        )
