"""scripts/benchmark.py and scripts/gpu_check.sh in their tiny CPU modes: every section runs and
writes its numbers, the table comes last, bad arguments fail in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

#: the keys each JSON section must hold (what the README and gpu_check's table read)
KEYS = {
    "meta": {"device", "device_name", "cpu_count", "torch", "model", "size", "args", "seconds"},
    "model_step": {"batch", "variant", "images_per_s", "step_ms", "peak_rss_mb"},
    "steelseg_loop": {
        "batch",
        "train_images_per_s",
        "val_images_per_s",
        "epoch_overhead_s",
        "fixed_s",
        "precision",
        "channels_last",
        "fused",
        "pin_memory",
        "peak_rss_mb",
    },  # fmt: skip
    "reference_loop": {"batch", "train_images_per_s", "val_images_per_s", "epoch_overhead_s"},
    "inference": {"size", "batch", "model_only", "predictor", "predictor_note"},
    "rle": {"decode_loop_us", "decode_us", "encode_where_us", "encode_us", "decode_speedup"},
    "data_path": {
        "cached_images_per_s",
        "jpeg_images_per_s",
        "reference_style_images_per_s",
        "cached_over_jpeg",
        "size",
        "threads",
    },  # fmt: skip
    "memory": {
        "cache_mb",
        "train_cache_mb",
        "rss_before_mb",
        "rss_peak_mb",
        "rss_growth_mb",
        "overhead_mb",
        "anon_growth_mb",
    },  # fmt: skip
    "ratios": {"b_over_a", "b_over_c", "predictor_over_model", "cached_over_jpeg"},
    "reference_recipe": {"recipe", "steelseg_s", "reference_style_s", "pure_model_fp32_s"},
    "peak": {"host_rss_mb", "gpu_mb"},
    "runtimes": {
        "cpu",
        "native_bf16",
        "versions",
        "threads",
        "size",
        "batches",
        "tolerance",
        "rows",
        "models",
    },  # fmt: skip
}
#: the runtimes section: each row (model, variant, batch) and each model's entry
RUNTIME_ROW_KEYS = {
    "model",
    "variant",
    "runtime",
    "precision",
    "batch",
    "images_per_s",
    "mean_images_per_s",
    "speedup",
    "strip_images_per_s",
    "strip_speedup",
    "dice_per_image",
    "iou",
    "dice_diff",
    "iou_diff",
    "dice_ok",
}  # fmt: skip
RUNTIME_MODEL_KEYS = {"model", "trained", "test_images", "skipped", "auto", "predict_folder"}


@pytest.fixture(scope="module")
def benchmark():
    """scripts/benchmark.py; loading it puts scripts/ on sys.path, so its sections' package
    (scripts/bench/) imports as ``bench``."""
    spec = importlib.util.spec_from_file_location("steelseg_benchmark", SCRIPTS / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(section) -> list[dict]:
    return section if isinstance(section, list) else [section]


def test_data_path_and_rle_sections(benchmark, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["--smoke", "--device", "cpu", "--sections", "rle,data", "--json", str(out)]
    assert benchmark.main([*argv, "--workdir", str(tmp_path / "work")]) == 0
    r = json.loads(out.read_text())
    assert set(r) >= {"meta", "rle", "data_path", "ratios", "peak"}
    assert "model_step" not in r and "steelseg_loop" not in r  # only what was asked
    for section in ("rle", "data_path"):
        assert KEYS[section] <= set(r[section]), section
    dp = r["data_path"]
    assert dp["size"] == [256, 416] and dp["threads"] == 1
    for k in ("cached_images_per_s", "jpeg_images_per_s", "reference_style_images_per_s"):
        assert dp[k] > 0
    assert r["ratios"]["cached_over_jpeg"] == dp["cached_over_jpeg"]
    assert r["rle"]["rows"] > 0 and r["rle"]["decode_us"] > 0
    table = capsys.readouterr().out.strip().splitlines()
    assert "data path per core, uint8 cache" in "\n".join(table)
    assert table[-1].startswith("peak host RSS")  # the table is printed last


def test_reference_style_dataset_matches_the_split(
    benchmark, synth_root: Path, tmp_path: Path
) -> None:
    from bench.context import split_rows
    from bench.reference_loop import ReferenceStyleDataset
    from steelseg import rle
    from steelseg.dataset import SteelDataModule

    dm = SteelDataModule(str(synth_root), str(tmp_path / "p"), n_images=None, cache=False)
    dm.prepare_data()
    rows_ = split_rows(tmp_path / "p", "val")
    ds = ReferenceStyleDataset(rows_, synth_root, (64, 320), False, 3, (0.5,) * 3, (0.25,) * 3)
    x, y = ds[0]
    assert x.shape == (3, 64, 320) and x.dtype.is_floating_point
    assert y.shape == (1, 64, 320) and set(y.unique().tolist()) <= {0.0, 1.0}
    assert (y.sum() > 0) == (rle.area(rows_["EncodedPixels"][0]) > 0)


def test_projection_of_the_reference_recipe(benchmark) -> None:
    from bench.summary import project_reference_recipe

    row = {"train_images_per_s": 400.0, "val_images_per_s": 1000.0, "epoch_overhead_s": 0.5}
    # 30 x (800/400 + 100/1000 + 0.5) + 3 s of start-up
    assert project_reference_recipe(row | {"fixed_s": 3.0}) == pytest.approx(81.0)
    assert project_reference_recipe(None) is None


def test_seed_is_a_deprecated_alias_of_the_reference_section(benchmark, caplog) -> None:
    from bench.options import parse_sections

    assert parse_sections("seed") == ["reference"]
    assert parse_sections("model, seed,reference") == ["model", "reference"]
    assert "deprecated" in caplog.text
    assert benchmark.build_parser().parse_args(["--seed-batch", "2"]).reference_batch == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sections", "model,gpu"], "unknown section"),
        (["--height", "100"], "multiple of 32"),
        (["--compile", "fast"], "model.compile"),
        (["--batch", "0"], "--batch=0 must be >= 1"),
        (["--runtime-batches", "1,0"], "--runtime-batches=1,0"),
        (["--runtime-models", "vgg"], "--runtime-models"),
        (["--serve-clients", "8,0"], "--serve-clients=8,0"),
        (["--serve-model", "no-such.ckpt"], "--serve-model no-such.ckpt does not exist"),
    ],
)
def test_bad_arguments_fail_in_one_line(benchmark, argv, message, capsys) -> None:
    assert benchmark.main(["--smoke", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("benchmark.py: error:") and message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_cuda_without_a_gpu_fails_in_one_line(benchmark, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert benchmark.main(["--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_run_writes_every_section(benchmark, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["--smoke", "--device", "cpu", "--memory-images", "150", "--json", str(out)]
    assert benchmark.main(argv) == 0
    r = json.loads(out.read_text())
    for section, keys in KEYS.items():
        for row in rows(r[section]):
            assert keys <= set(row), (section, keys - set(row))
    assert r["steelseg_loop"][0]["precision"] == "32-true"  # CPU: fp32, as before
    assert not r["steelseg_loop"][0]["pin_memory"] and not r["steelseg_loop"][0]["fused"]
    assert r["inference"]["predictor"]["images_per_s"] > 0
    mem = r["memory"]
    assert mem["cache_mb"] > 0 and mem["rss_peak_mb"] >= mem["rss_before_mb"]
    # the memory-mapped cache: an epoch costs its pages plus a constant, not a copy per sample
    assert mem["rss_growth_mb"] <= mem["train_cache_mb"] + 100, mem
    assert mem["anon_growth_mb"] < mem["cache_mb"] / 2, mem  # a 32 MB cache: never on the heap
    for v in r["reference_recipe"].values():
        assert v is None or isinstance(v, dict) or v > 0
    assert "serve" not in r  # only when asked for
    table = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("(c) reference-style loop, train") for line in table)
    assert table[-1].startswith("peak host RSS")


@pytest.mark.slow
def test_runtimes_section_on_a_trained_checkpoint(
    benchmark, tiny_ckpt: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "bench.json"
    run = tiny_ckpt.parents[1]
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    argv = ["--smoke", "--device", "cpu", "--sections", "runtimes", "--json", str(out)]
    assert benchmark.main([*argv, "--quickstart-ckpt", str(tiny_ckpt)]) == 0
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing beside it
    r = json.loads(out.read_text())["runtimes"]
    assert KEYS["runtimes"] <= set(r) and r["batches"] == [1, 2]
    assert set(r["models"]) == {"quickstart"}  # --smoke: no resnext50
    info = r["models"]["quickstart"]
    assert set(info) >= RUNTIME_MODEL_KEYS and info["trained"] and info["test_images"] > 0
    for row in r["rows"]:
        assert set(row) >= RUNTIME_ROW_KEYS, RUNTIME_ROW_KEYS - set(row)
        assert row["images_per_s"] > 0 and row["strip_images_per_s"] > 0
        assert 0 <= row["dice_per_image"] <= 1 and row["dice_ok"] in (True, False)
    base = [row for row in r["rows"] if row["variant"] == "torch fp32"]
    assert [row["batch"] for row in base] == [1, 2]
    assert all(row["speedup"] == 1.0 and row["dice_diff"] == 0 for row in base)
    variants = {row["variant"] for row in r["rows"]} | set(info["skipped"])
    assert {"onnxruntime int8", "openvino int8", "openvino bf16"} <= variants  # run or skipped
    auto = info["auto"]
    assert [b["batch"] for b in auto["batches"]] == [1, 2] and auto["dice_per_image"] is not None
    folder = info["predict_folder"]
    assert folder["images"] == 4 and folder["over_model"] > 0
    assert (folder["runtime"], folder["precision"]) == (auto["runtime"], auto["precision"])
    table = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("(r) quickstart auto = ") for line in table)
    assert any(line.startswith("(r) CPU runtimes on ") for line in table)


def test_serve_batches_from_two_histograms(benchmark) -> None:
    from bench.serve import batches

    # cumulative batches per bucket upper bound (steelseg_batch_size), before and after a run
    before = {1.0: 4, 2.0: 4, 6.0: 4, 8.0: 4, float("inf"): 4}
    after = {1.0: 7, 2.0: 9, 6.0: 14, 8.0: 30, float("inf"): 30}
    assert batches(before, after) == {"1": 3, "2": 2, "3-6": 5, "7-8": 16}
    assert batches({}, {1.0: 0, 64.0: 0, float("inf"): 2}) == {">64": 2}


@pytest.mark.slow
def test_serve_section(benchmark, tmp_path: Path, capsys) -> None:
    out, work = tmp_path / "bench.json", tmp_path / "work"
    argv = ["--smoke", "--device", "cpu", "--sections", "serve", "--json", str(out)]
    assert benchmark.main([*argv, "--serve-requests", "12", "--workdir", str(work)]) == 0
    r = json.loads(out.read_text())["serve"]
    assert not r["trained"] and r["max_batch"] == 8 and r["model_images_per_s"] > 0
    assert [row["clients"] for row in r["rows"]] == [1, 8]
    for row in r["rows"]:
        assert row["requests"] == 12 and row["images_per_s"] > 0 and row["over_model"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert sum(row["batches"].values()) == row["engine_batches"]  # /metrics = answers
        assert 1 <= row["mean_batch"] <= 8 and row["server_ms"]["total"] > 0
    assert r["rows"][0]["batches"] == {"1": 12}  # one client: batches of one
    log = (work / "serve" / "server.log").read_text()
    assert "steelseg-serve: stopped (0 request(s) unfinished)" in log  # drained, then stopped
    table = capsys.readouterr().out
    assert "(s) serve, 8 client(s)" in table and "(target >= 0.8)" in table


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    env = os.environ | {
        "STEELSEG_GPU_CHECK_CPU": "1",
        "STEELSEG_GPU_CHECK_OUT": str(tmp_path / "out"),
        "STEELSEG_PYTHON": sys.executable,
        "STEELSEG_GPU_CHECK_COMPILE": "",  # compiling on 2 CPU cores takes minutes
    }
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_check.sh")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    files = {p.name for p in out.iterdir()}
    assert files >= {"gpu_check.txt", "benchmark.json", "env.txt", "steps.txt", "gpu_tests.log"}
    assert files >= {"train_metrics1.json", "train_metrics2.json", "sweep_summary.csv"}
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("steps: all") and "5 of 5 ok" in lines[-1]
    assert any(line.startswith("GPU tests") and "skipped" in line for line in lines)  # no CUDA
    assert any(line.startswith("training run: precision") and "32-true" in line for line in lines)
    assert any(line.startswith("same seed, two runs") for line in lines)
    assert any(line.startswith("profile (b): wall / host / GPU busy") for line in lines)
    sweep = [line for line in lines if line.startswith("sweep: ")]
    assert len(sweep) == 2 and all("val / test IoU" in line for line in sweep)  # unet and fpn
    metrics = json.loads((out / "train_metrics1.json").read_text())["metrics"]
    assert metrics["epochs"] >= 0 and "val/iou" in metrics


def test_gpu_check_table_says_what_failed_and_what_was_missed(tmp_path: Path) -> None:
    """The table alone, on what a check left behind: a failed step, a skipped one, a missed
    target; exit status 1."""
    (tmp_path / "steps.txt").write_text(
        "GPU tests 0 12\nbenchmark 0 90\nsweep 1 30\nbenchmark compile skipped 0\n"
    )
    bench = {
        "meta": {"device_name": "NVIDIA H200"},
        "ratios": {"b_over_a": 0.95, "b_over_c": 1.2},
        "reference_recipe": {"steelseg_s": 75.0},
    }
    (tmp_path / "benchmark.json").write_text(json.dumps(bench))
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_check_table.py"), str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    out = {line.split("  ")[0]: line for line in proc.stdout.splitlines()}
    assert "NVIDIA H200" in out["device"]
    assert "target >= 0.9: met" in out["ratio b/a"]
    assert "target >= 1.6: MISSED" in out["ratio b/c"]
    assert "target <= 60 s: MISSED" in out["reference recipe projected, steelseg"]
    assert "FAILED (exit 1)" in out["step: sweep"] and "SKIPPED" in out["step: benchmark compile"]
    assert "no summary" in out["sweep (compare_arch_encoder)"]
    assert "132 s" in out["steps: all"] and "2 of 4 ok" in out["steps: all"]


def test_gpu_check_refuses_an_unknown_step(tmp_path: Path) -> None:
    env = os.environ | {
        "STEELSEG_GPU_CHECK_CPU": "1",
        "STEELSEG_GPU_CHECK_STEPS": "tests,bench",
        "STEELSEG_GPU_CHECK_OUT": str(tmp_path),
        "STEELSEG_PYTHON": sys.executable,
    }
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_check.sh")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "no step 'bench'; choose from tests,train,sweep,benchmark,compile" in proc.stderr
    assert not (tmp_path / "steps.txt").exists()  # nothing ran


def test_gpu_check_names_missing_packages(tmp_path: Path) -> None:
    bare = "/usr/bin/python3"
    if not Path(bare).exists() or subprocess.run([bare, "-c", "import torch"]).returncode == 0:
        pytest.skip("needs a python3 without torch to stand for a bare machine")
    env = os.environ | {"STEELSEG_PYTHON": bare, "STEELSEG_GPU_CHECK_OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_check.sh")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "lacks Python packages: torch" in last and "gpu_check.sh wheels" in last
