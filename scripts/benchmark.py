"""Benchmark steelseg's training and inference against the model-only ceiling and a
reference-style pipeline (the original task's), side by side in one run, on a CPU or a CUDA GPU.

    python scripts/benchmark.py                          # CPU: tiny model; GPU: FPN/resnext50_32x4d
    python scripts/benchmark.py --json bench.json        # also write every number as JSON
    python scripts/benchmark.py --sections data          # only the data path, images/s per core
    python scripts/benchmark.py --compile reduce-overhead --batch 8   # add torch.compile runs
    python scripts/benchmark.py --sections runtimes --quickstart-ckpt RUN/checkpoints/last.ckpt

Sections (``--sections``, comma-separated; default all, on a GPU all but ``runtimes``):

* ``model``: (a) the model-only training-step ceiling: random inputs already on the device,
  AdamW, Dice loss; on a GPU fp32 (framework defaults) and bf16 + channels_last + fused AdamW.
* ``steelseg``: (b) steelseg's real loop: synthetic JPEGs on disk, prepared + uint8 cache, the
  composed ``train`` config, SteelDataModule, SteelSegModule and a Lightning Trainer.
* ``reference``: (c) a reference-style loop: fp32, per-sample cv2 JPEG decode + per-run RLE
  decode + albumentations Resize/flip/Normalize in a DataLoader, a plain PyTorch loop with a
  per-step ``loss.item()``.
* ``inference``: (d) full 256x1600 images: the model alone against ``steelseg.predict.Predictor``.
* ``rle``: (e) RLE decode/encode against the per-run Python loop (scripts/bench_rle.py).
* ``data``: the data path alone, one process on one core, at 256x416: the uint8 cache against
  decoding the JPEG (target: cached >= 3x).
* ``memory``: host memory of one training epoch over a larger set (``--memory-images``) against
  the size of its uint8 cache (memory-mapped, so the bound is the cache plus a constant).
* ``runtimes``: (r) CPU inference on full 256x1600 strips at ``--runtime-batches`` (1 and 8)
  for FPN/resnext50_32x4d and the quickstart model (``--runtime-models``), on every runtime and
  precision here (PyTorch eager fp32 (the baseline), fp32 channels_last, bf16; ONNX Runtime
  fp32 and INT8; OpenVINO fp32, bf16 and INT8): model-only images/s and the Predictor's on full
  strips (of the fastest call in ``--runtime-seconds``: steady on a shared machine), each as a
  ratio to PyTorch eager fp32, and per-image Dice and IoU on the test split beside fp32's. The
  accuracy (and INT8, calibrated on the run's train split) needs a trained checkpoint in its
  steelseg-train run folder (``--quickstart-ckpt``, ``--resnext-ckpt``); without one the
  network is untrained and the accuracy is not measured. Also what
  ``steelseg.deploy.load_predictor`` picks (``--runtime auto``) and its ratio, and
  ``steelseg-predict`` over a folder of ``--runtime-images`` JPEG strips against its model-only
  images/s. Every runtime runs on ``--runtime-threads`` (default: every core). The checkpoints
  are copied into the work folder first: the automatic choice is measured afresh and nothing
  is written beside them. ``--smoke``: the quickstart-shaped network only, batches 1 and 2. A
  default section on a CPU; on a GPU only when asked for (it measures the CPU).

The reference recipe's wall time (800 training images x 30 epochs at batch 8, 100 validation
images every epoch) is projected from (b) and (c) at ``--reference-batch``. The table is printed
last. ``--sections seed`` and ``--seed-batch`` are deprecated aliases of ``--sections reference``
and ``--reference-batch``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

SECTIONS = ("model", "steelseg", "reference", "inference", "rle", "data", "memory", "runtimes")
#: sections a default run leaves out on a CUDA device: they measure the CPU
CPU_SECTIONS = ("runtimes",)
#: deprecated section names: ``seed`` meant the reference (the original task) before the rename
SECTION_ALIASES = {"seed": "reference"}
REFERENCE_RECIPE = {"train_images": 800, "val_images": 100, "epochs": 30, "batch_size": 8}
DATA_SIZE = (256, 416)  # the reference's training size: the data path is always measured there
FULL_SIZE = (256, 1600)  # Severstal images
SLIM_FPN = {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}
AUGMENT = {"p_flip": 0.5, "brightness": 0.2, "contrast": 0.2, "shift": 0.05}  # conf/data
#: the runtimes section's big model: the reference's network on full strips, 3 input channels
RESNEXT = dict(arch="fpn", encoder_name="resnext50_32x4d", in_channels=3, arch_kwargs={})
#: the runtimes section's models, and the speed-up over PyTorch eager fp32 each aims at
#: (``--runtime auto``, full strips)
RUNTIME_TARGETS = {"resnext50": 5.0, "quickstart": 3.0}
RUNTIME_MODELS = tuple(RUNTIME_TARGETS)
#: the runtimes section's variants, PyTorch eager fp32 (the baseline of every ratio) first.
#: channels_last None: the engine's own choice (bf16 on a CPU: channels_last); export: the
#: ONNX file it runs (OpenVINO reads the ONNX files, as steelseg.deploy runs them)
RUNTIME_VARIANTS = (
    {"name": "torch fp32", "runtime": "torch", "precision": "fp32", "channels_last": False},
    {"name": "torch fp32+cl", "runtime": "torch", "precision": "fp32", "channels_last": True},
    {"name": "torch bf16+cl", "runtime": "torch", "precision": "bf16", "channels_last": None},
    {"name": "onnxruntime fp32", "runtime": "onnxruntime", "precision": "fp32", "export": "fp32"},
    {"name": "onnxruntime int8", "runtime": "onnxruntime", "precision": "int8", "export": "int8"},
    {"name": "openvino fp32", "runtime": "openvino", "precision": "fp32", "export": "fp32"},
    {"name": "openvino bf16", "runtime": "openvino", "precision": "bf16", "export": "fp32"},
    {"name": "openvino int8", "runtime": "openvino", "precision": "int8", "export": "int8"},
)

#: --tiny (the CPU default): a ~1M-parameter network at 64x320 so every section runs in minutes
TINY = dict(
    arch="fpn", encoder="tu-mobilenetv3_small_100", in_channels=1, arch_kwargs=SLIM_FPN,
    batch=8, reference_batch=8, height=64, width=320, images=120, epochs=2, steps=5, warmup=2,
    workers=0, infer_batch=4, infer_steps=2, memory_images=500, data_samples=200, rle_rows=500,
    runtime_batches="1,8", runtime_images=16, runtime_seconds=2.0, calibration_images=64,
    runtime_models="resnext50,quickstart",
)  # fmt: skip
#: the GPU default: the reference's network at the reference's size, the issue's batch 32
FULL = dict(
    arch="fpn", encoder="resnext50_32x4d", in_channels=3, arch_kwargs={},
    batch=32, reference_batch=8, height=256, width=416, images=320, epochs=3, steps=30, warmup=10,
    workers=None, infer_batch=32, infer_steps=8, memory_images=500, data_samples=400,
    rle_rows=1000, runtime_batches="1,8", runtime_images=16, runtime_seconds=2.0,
    calibration_images=64, runtime_models="resnext50,quickstart",
)  # fmt: skip
#: --smoke: a few steps of everything, for tests
SMOKE = dict(
    images=30, epochs=2, steps=2, warmup=1, infer_batch=2, infer_steps=1, memory_images=40,
    data_samples=16, rle_rows=20, batch=4, reference_batch=4, runtime_batches="1,2",
    runtime_images=4, runtime_seconds=0.0, calibration_images=16, runtime_models="quickstart",
)  # fmt: skip

log = logging.getLogger("benchmark")


# ----------------------------------------------------------------------------- measuring
def _proc_status_mb(field: str) -> float | None:
    """A field of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile) in MB, None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> dict[str, float | None]:
    """Current host memory: resident, of it anonymous (heap) and file-backed (memory maps)."""
    return {k: _proc_status_mb(f) for k, f in (("rss", "VmRSS"), ("anon", "RssAnon"))} | {
        "file": _proc_status_mb("RssFile")
    }


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process since start or the last :func:`reset_peak_rss`."""
    peak = _proc_status_mb("VmHWM")
    if peak is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS)
        import resource

        div = 1024 * 1024 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / div
    return peak


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


class Peaks:
    """Per-section peak host RSS and peak GPU memory, and the run's overall peaks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gpu_mb = 0.0
        self.host_mb = 0.0
        self.resettable = True

    @contextmanager
    def section(self, out: dict[str, Any]) -> Iterator[None]:
        self.resettable = reset_peak_rss() and self.resettable
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        host = peak_rss_mb() or 0.0
        out["peak_rss_mb"] = round(host, 1)
        self.host_mb = max(self.host_mb, host)
        if self.device.type == "cuda":
            gpu = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["peak_gpu_mb"] = round(gpu, 1)
            self.gpu_mb = max(self.gpu_mb, gpu)


@contextmanager
def cores(n: int) -> Iterator[None]:
    """Run the block on ``n`` threads (torch and OpenCV), restoring the settings after."""
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def one_core():
    """Run the block on one thread (torch and OpenCV), restoring the settings after."""
    return cores(1)


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def per_s(n: float, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else float("nan")


def call_seconds(fn: Callable[[], Any], min_seconds: float, warmup: bool = True) -> list[float]:
    """Seconds of each call of ``fn``: at least one call, and calls for at least ``min_seconds``
    in all, after one untimed call (``warmup``)."""
    if warmup:
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def ratio(value: float | None, base: float | None, digits: int = 2) -> float | None:
    return round(value / base, digits) if value and base else None


def runtime_variant(predictor) -> str:
    """The name in :data:`RUNTIME_VARIANTS` of what a Predictor runs on."""
    engine = predictor.engine
    if engine.runtime == "torch":
        return f"torch {engine.precision}" + ("+cl" if engine.channels_last else "")
    return f"{engine.runtime} {engine.precision}"


# ----------------------------------------------------------------------------- shared pieces
def load_bench_rle():
    """scripts/bench_rle.py as a module: its per-run loop and ``np.where`` encoder are the
    references here too, so the two benchmarks race the same code."""
    path = Path(__file__).with_name("bench_rle.py")
    spec = importlib.util.spec_from_file_location("steelseg_bench_rle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_module(args: argparse.Namespace, **kwargs: Any):
    from steelseg.model import SteelSegModule

    return SteelSegModule(
        args.arch, args.encoder, None, args.in_channels, dict(args.arch_kwargs), **kwargs
    )


def save_untrained(module, path: Path) -> Path:
    """An untrained module as a steelseg checkpoint (what the inference code loads)."""
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


def stage_run(checkpoint: Path, folder: Path) -> Path:
    """A copy of ``checkpoint`` in ``folder``/checkpoints/, with its run's config.yaml (where
    the labelled splits are found) and its tuned post-processing: what the benchmark writes
    beside it (exports, the runtime choice) stays in the work folder, and is made afresh."""
    from steelseg.checkpoint import run_folder
    from steelseg.postprocess import sidecar_path

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    target = folder / "checkpoints" / checkpoint.name
    target.parent.mkdir(parents=True, exist_ok=True)
    config = run_folder(checkpoint) / "config.yaml"
    if config.is_file():
        shutil.copy2(config, folder / "config.yaml")
    for source in (checkpoint, sidecar_path(checkpoint)):
        if source.is_file():
            shutil.copy2(source, target.with_name(source.name))
    return target


def strip_folder(folder: Path, n: int) -> Path:
    """``n`` synthetic full-strip JPEGs (256x1600, quality 95 as Kaggle's) in a plain folder."""
    from steelseg import synth

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image, _ = synth.make_image(rng)
        cv2.imwrite(str(folder / f"strip{i:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def synthetic_set(folder: Path, n_images: int) -> Path:
    """A synthetic Kaggle-layout set of ``n_images`` at ``folder`` (reused when it matches)."""
    from steelseg import synth

    marker = folder / synth.MARKER
    made = (folder / "train.csv").exists() and marker.exists()
    if made and json.loads(marker.read_text()).get("n_images") == n_images:
        return folder
    t = time.perf_counter()
    synth.generate(folder, n_images=n_images, seed=0, n_test=0, progress=False)
    log.info("generated %d synthetic images in %.1f s", n_images, time.perf_counter() - t)
    return folder


def prepared_split(root: Path, prepared: Path, size: tuple[int, int]) -> dict[str, Any]:
    """split.csv (80/10/10) and a uint8 cache at ``size`` through SteelDataModule.prepare_data."""
    from steelseg.dataset import SteelDataModule

    dm = SteelDataModule(
        str(root), str(prepared), n_images=None, split=(0.8, 0.1, 0.1), height=size[0],
        width=size[1], cache=True, num_workers=0,
    )  # fmt: skip
    t = time.perf_counter()
    dm.prepare_data()
    return {"seconds": round(time.perf_counter() - t, 2), "datamodule": dm}


def split_rows(prepared: Path, name: str) -> pd.DataFrame:
    rows = pd.read_csv(prepared / "split.csv", dtype={"EncodedPixels": str}, keep_default_na=False)
    return rows[rows["split"] == name].reset_index(drop=True)


def cache_arrays(prepared: Path, size: tuple[int, int], name: str):
    """(images, masks, positions) of one split in the memory-mapped cache, as SteelDataset takes."""
    from steelseg import prepare as prep

    folder = prep.cache_dir(prepared, size)
    rows = pd.read_csv(prepared / "split.csv", dtype={"EncodedPixels": str}, keep_default_na=False)
    idx = np.flatnonzero(rows["split"].to_numpy() == name)
    images = np.load(folder / "images.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r")
    return images, masks, idx


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """The reference's data path: decode the JPEG and the RLE (per-run loop) for every sample, then
    albumentations Resize, flip and Normalize on the CPU; float32 tensors out.

    Args:
        rows: split.csv rows (ImageId, EncodedPixels).
        root: Kaggle-layout folder.
        size: (height, width) to resize to.
        train: Random horizontal flips.
        in_channels: 3: decode as colour (the reference read its grey JPEGs as 3 channels); 1: grey.
        mean: Per-channel mean (0..1 scale) for Normalize.
        std: Per-channel std (0..1 scale).
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        root: Path,
        size: tuple[int, int],
        train: bool,
        in_channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        import albumentations as A

        self.ids, self.rles = rows["ImageId"].tolist(), rows["EncodedPixels"].tolist()
        self.root, self.in_channels = Path(root), in_channels
        self.decode: Callable[[str], np.ndarray] | None = None  # loaded in the worker
        flips = [A.HorizontalFlip(p=0.5)] if train else []
        self.transform = A.Compose(
            [A.Resize(*size), *flips, A.Normalize(mean=mean, std=std, max_pixel_value=255.0)]
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        flag = cv2.IMREAD_COLOR if self.in_channels == 3 else cv2.IMREAD_GRAYSCALE
        image = cv2.imread(str(self.root / "train_images" / self.ids[i]), flag)
        if self.decode is None:
            self.decode = load_bench_rle().loop_decode
        mask = np.ascontiguousarray(self.decode(self.rles[i]))
        out = self.transform(image=image, mask=mask)
        image = out["image"] if image.ndim == 3 else out["image"][..., None]
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (C, H, W) float32
        return x, torch.from_numpy(out["mask"])[None].float()


def reference_stats(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from steelseg.model import normalisation

    mean, std = normalisation(args.encoder, args.in_channels)
    return tuple(mean.flatten().tolist()), tuple(std.flatten().tolist())


def epoch_summary(epochs: list[dict[str, float]], fit_s: float) -> dict[str, Any]:
    """Images/s of training and validation and the per-epoch rest, over epochs after the first;
    ``fit_s`` is the whole run's wall time."""
    timed = epochs[1:] if len(epochs) > 1 else epochs
    train_s = sum(e["train_s"] for e in timed)
    val_s = sum(e.get("val_s", 0.0) for e in timed)
    val_n = sum(e.get("val_images", 0) for e in timed)
    rest = [e["wall_s"] - e["train_s"] - e.get("val_s", 0.0) for e in timed]
    steady = float(np.mean([e["wall_s"] for e in timed])) if timed else 0.0
    return {
        "epochs_timed": len(timed),
        # one-time cost of the run beyond its steady epochs (start-up, warm-up, compiling)
        "fixed_s": round(max(0.0, fit_s - len(epochs) * steady), 2),
        "train_images_per_s": per_s(sum(e["train_images"] for e in timed), train_s),
        "val_images_per_s": per_s(val_n, val_s) if val_n else None,
        "epoch_overhead_s": round(max(0.0, float(np.mean(rest))), 3) if rest else 0.0,
        "first_epoch_s": round(epochs[0]["wall_s"], 2) if epochs else None,
    }


def project_reference_recipe(row: dict[str, Any] | None) -> float | None:
    """Wall time of the reference recipe (800 x 30 epochs at batch 8, 100 validation images each
    epoch) from a loop's measured images/s and per-epoch overhead."""
    if not row or not row.get("train_images_per_s") or not row.get("val_images_per_s"):
        return None
    r = REFERENCE_RECIPE
    per_epoch = (
        r["train_images"] / row["train_images_per_s"]
        + r["val_images"] / row["val_images_per_s"]
        + row["epoch_overhead_s"]
    )
    return round(r["epochs"] * per_epoch + row["fixed_s"], 1)


# ----------------------------------------------------------------------------- the benchmark
class Benchmark:
    """Runs the sections; every result lands in :attr:`results` (the JSON)."""

    def __init__(self, args: argparse.Namespace, device: torch.device, work: Path) -> None:
        self.args, self.device, self.work = args, device, work
        self.cuda = device.type == "cuda"
        self.peaks = Peaks(device)
        self.results: dict[str, Any] = {}
        self._data: dict[str, Any] | None = None

    # ------------------------------------------------------------------ data on disk
    @property
    def size(self) -> tuple[int, int]:
        return (self.args.height, self.args.width)

    def data(self) -> dict[str, Any]:
        """The shared synthetic set, split and caches (model size and data-path size)."""
        if self._data is None:
            root = synthetic_set(self.work / "synthetic", self.args.images)
            prepared = self.work / "prepared"
            prep = prepared_split(root, prepared, self.size)
            if self.size != DATA_SIZE:
                from steelseg import prepare as prepmod

                prepmod.build_cache(root, prepared, DATA_SIZE)
            self._data = {"root": root, "prepared": prepared, "prepare_s": prep["seconds"]}
            self.results["data_set"] = {
                "images": self.args.images,
                "split": {s: len(split_rows(prepared, s)) for s in ("train", "val", "test")},
                "prepare_and_cache_s": prep["seconds"],
            }
        return self._data

    def workers(self) -> int:
        w = self.args.workers
        return min(4, os.cpu_count() or 1) if w is None else w  # steelseg's default (conf/data)

    # ------------------------------------------------------------------ (a) model only
    def variants(self) -> list[dict[str, Any]]:
        out = [{"name": "fp32", "bf16": False, "channels_last": False, "compile": None}]
        if self.cuda and torch.cuda.is_bf16_supported():
            out.append({"name": "bf16+cl", "bf16": True, "channels_last": True, "compile": None})
        if self.args.compile:
            out.append(dict(out[-1], name=out[-1]["name"] + "+compile", compile=self.args.compile))
        return out

    def model_step(self, batch: int, variant: dict[str, Any]) -> dict[str, Any]:
        """Images/s of forward + Dice loss + backward + AdamW on random inputs on the device."""
        a, dev = self.args, self.device
        row: dict[str, Any] = {"batch": batch, "variant": variant["name"]}
        with self.peaks.section(row):
            module = make_module(
                a, channels_last=variant["channels_last"], compile=variant["compile"] or False
            ).to(dev)
            if variant["channels_last"]:
                module.net.to(memory_format=torch.channels_last)
            if variant["compile"]:
                module.on_fit_start()  # compiles the network in place, as a fit does
            fused = True if self.cuda and variant["bf16"] else None  # fp32: framework defaults
            opt = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=fused)
            x = torch.randint(0, 256, (batch, 1, *self.size), dtype=torch.uint8, device=dev)
            y = (torch.rand(batch, 1, *self.size, device=dev) > 0.9).float()
            amp = torch.autocast(dev.type, torch.bfloat16) if variant["bf16"] else nullcontext()

            def step() -> None:
                with amp:
                    loss = module.loss_fn(module(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            t0 = time.perf_counter()
            for _ in range(a.warmup):
                step()
            sync(dev)
            row["warmup_s"] = round(time.perf_counter() - t0, 2)
            t = now(dev)
            for _ in range(a.steps):
                step()
            seconds = now(dev) - t
            row["images_per_s"] = per_s(batch * a.steps, seconds)
            row["step_ms"] = round(seconds / a.steps * 1000, 2)
        return row

    def section_model(self) -> None:
        rows = []
        torch.backends.cudnn.benchmark = True  # the ceiling: fixed shapes, tuned kernels
        for batch in self.batches():
            for variant in self.variants():
                rows.append(self.model_step(batch, variant))
                log.info("model %s", rows[-1])
        self.results["model_step"] = rows

    def batches(self) -> list[int]:
        return sorted({self.args.batch, self.args.reference_batch})

    # ------------------------------------------------------------------ (b) steelseg loop
    def steelseg_loop(self, batch: int, compile_mode: str | None) -> dict[str, Any]:
        from steelseg import config
        from steelseg.train import build, build_all

        a, d = self.args, self.data()
        kwargs = ",".join(f"{k}:{v}" for k, v in a.arch_kwargs.items())
        name = f"steelseg-b{batch}" + ("-compile" if compile_mode else "")
        overrides = [
            f"data.root={d['root']}", "data.synthetic=null", "data.n_images=null",
            "data.split=[0.8,0.1,0.1]", f"data.prepared_dir={d['prepared']}",
            f"data.height={a.height}", f"data.width={a.width}", f"data.batch_size={batch}",
            f"data.num_workers={self.workers()}",
            f"model.arch={a.arch}", f"model.encoder_name={a.encoder}",
            "model.encoder_weights=null", f"model.in_channels={a.in_channels}",
            f"++model.arch_kwargs={{{kwargs}}}", f"model.compile={compile_mode or False}",
            f"trainer.max_epochs={a.epochs}", f"trainer.accelerator={'gpu' if self.cuda else 'cpu'}",
            "+trainer.enable_model_summary=false", "callbacks.progress_bar=null",
            "+trainer.enable_progress_bar=false",  # as in a batch job: no bar to refresh
        ]  # fmt: skip
        cfg = config.compose(overrides, output_dir=self.work / "runs" / name)
        timer = EpochTimer(self.device)
        row: dict[str, Any] = {"batch": batch, "compile": compile_mode}
        with self.peaks.section(row):
            dm, module = build(cfg.data), build(cfg.model)
            trainer = build(
                cfg.trainer,
                callbacks=[*build_all(cfg.get("callbacks")), timer],
                logger=build_all(cfg.get("logger")) or False,
            )
            t = time.perf_counter()
            trainer.fit(module, datamodule=dm)
            row["fit_s"] = round(time.perf_counter() - t, 2)
        row |= epoch_summary(timer.epochs, row["fit_s"])
        row |= {
            "precision": str(trainer.precision),
            "channels_last": module.use_channels_last(self.device),
            "fused": bool(trainer.optimizers[0].defaults.get("fused")),
            "pin_memory": bool(trainer.train_dataloader.pin_memory),
            "num_workers": dm.num_workers,
        }
        return row

    def section_steelseg(self) -> None:
        rows = []
        for batch in self.batches():
            rows.append(self.steelseg_loop(batch, None))
            log.info("steelseg %s", rows[-1])
            if self.args.compile:
                rows.append(self.steelseg_loop(batch, self.args.compile))
                log.info("steelseg %s", rows[-1])
        self.results["steelseg_loop"] = rows

    # ------------------------------------------------------------- (c) reference-style loop
    def reference_loop(self, batch: int) -> dict[str, Any]:
        from steelseg.losses import WeightedLoss
        from steelseg.model import build_network

        a, d, dev = self.args, self.data(), self.device
        torch.backends.cudnn.benchmark = False  # the framework default the reference ran with
        mean, std = reference_stats(a)

        def loader(split: str, train: bool):
            ds = ReferenceStyleDataset(
                split_rows(d["prepared"], split), d["root"], self.size, train, a.in_channels,
                mean, std,
            )  # fmt: skip
            return torch.utils.data.DataLoader(
                ds, batch_size=batch, shuffle=train, num_workers=self.workers(),
                drop_last=train and len(ds) > batch, persistent_workers=self.workers() > 0,
            )  # fmt: skip

        row: dict[str, Any] = {"batch": batch, "num_workers": self.workers()}
        with self.peaks.section(row):
            net = build_network(a.arch, a.encoder, None, a.in_channels, a.arch_kwargs).to(dev)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)  # framework defaults
            loss_fn = WeightedLoss({"dice": 1.0})
            train_loader, val_loader = loader("train", True), loader("val", False)
            epochs, losses, ious = [], [], []
            t_fit = time.perf_counter()
            for _ in range(a.epochs):
                e: dict[str, float] = {"train_images": 0}
                start = now(dev)
                net.train()
                for x, y in train_loader:
                    x, y = x.to(dev), y.to(dev)
                    loss = loss_fn(net(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())  # the reference's per-step loss on the progress bar
                    e["train_images"] += len(x)
                val_start = now(dev)
                net.eval()
                e["val_images"] = 0
                with torch.no_grad():
                    for x, y in val_loader:
                        x, y = x.to(dev), y.to(dev)
                        pred, truth = net(x) > 0, y > 0.5  # logit 0 = probability 0.5
                        inter, union = (pred & truth).sum(), (pred | truth).sum()
                        ious.append(((inter + 1e-7) / (union + 1e-7)).item())
                        e["val_images"] += len(x)
                end = now(dev)
                e |= {"train_s": val_start - start, "val_s": end - val_start, "wall_s": end - start}
                epochs.append(e)
            row["fit_s"] = round(time.perf_counter() - t_fit, 2)
        row |= epoch_summary(epochs, row["fit_s"])
        row["last_loss"] = round(losses[-1], 4) if losses else None
        return row

    def section_reference(self) -> None:
        rows = []
        for batch in self.batches():
            rows.append(self.reference_loop(batch))
            log.info("reference %s", rows[-1])
        self.results["reference_loop"] = rows

    # ------------------------------------------------------------------ (d) inference
    def section_inference(self) -> None:
        a, dev = self.args, self.device
        torch.backends.cudnn.benchmark = True
        out: dict[str, Any] = {"size": list(FULL_SIZE), "batch": a.infer_batch, "model_only": {}}
        n = a.infer_batch * a.infer_steps
        for variant in self.variants():
            if variant["compile"]:
                continue  # inference from a checkpoint is eager
            row: dict[str, Any] = {}
            with self.peaks.section(row):
                module = make_module(a, channels_last=variant["channels_last"]).to(dev).eval()
                if variant["channels_last"]:
                    module.net.to(memory_format=torch.channels_last)
                x = torch.randint(0, 256, (a.infer_batch, 1, *FULL_SIZE), dtype=torch.uint8)
                x = x.to(dev)
                amp = torch.autocast(dev.type, torch.bfloat16) if variant["bf16"] else nullcontext()
                with torch.inference_mode(), amp:
                    for _ in range(max(1, a.warmup // 2)):
                        module(x)
                    t = now(dev)
                    for _ in range(a.infer_steps):
                        module(x).sigmoid()
                    row["images_per_s"] = per_s(n, now(dev) - t)
            out["model_only"][variant["name"]] = row
        try:
            from steelseg.predict import Predictor
        except ImportError as e:
            out["predictor"] = None
            out["predictor_note"] = f"steelseg.predict.Predictor is missing ({e}); row skipped"
        else:
            row = {}
            with self.peaks.section(row):
                ckpt = self.inference_checkpoint()
                predictor = Predictor.from_checkpoint(
                    ckpt, device=dev, batch_size=a.infer_batch, use_tuned=False
                )
                rng = np.random.default_rng(0)
                images = list(rng.integers(0, 256, (n, *FULL_SIZE), dtype=np.uint8))
                predictor.predict_proba(images[: a.infer_batch])  # warm-up
                t = now(dev)
                probs = predictor.predict_proba(images)
                row["images_per_s"] = per_s(n, now(dev) - t)
                assert probs.shape == (n, *FULL_SIZE)
            out["predictor"] = row
            out["predictor_note"] = (
                "Predictor.predict_proba on uint8 numpy images: host->device copy, network, "
                "sigmoid, probabilities back to the host"
            )
        self.results["inference"] = out
        log.info("inference %s", out)

    def inference_checkpoint(self) -> Path:
        """A checkpoint of the benchmark's network trained at the full 256x1600 size."""
        module = make_module(self.args, input_size=list(FULL_SIZE))
        return save_untrained(module, self.work / "full-size.ckpt")

    # ------------------------------------------------------------------ (e) RLE
    def section_rle(self) -> None:
        from steelseg import rle

        bench = load_bench_rle()
        d = self.data()
        rows = rle.read_annotations(d["root"] / "train.csv")["EncodedPixels"].tolist()
        rows = rows[: self.args.rle_rows]
        masks = [rle.decode(s) for s in rows]
        repeat = 3
        t = {
            "decode_loop_us": bench.best_of(bench.loop_decode, rows, repeat),
            "decode_us": bench.best_of(rle.decode, rows, repeat),
            "encode_where_us": bench.best_of(bench.where_encode, masks, repeat),
            "encode_us": bench.best_of(rle.encode, masks, repeat),
        }
        out = {k: round(v, 1) for k, v in t.items()} | {"rows": len(rows)}
        out["decode_speedup"] = round(t["decode_loop_us"] / t["decode_us"], 2)
        out["encode_speedup"] = round(t["encode_where_us"] / t["encode_us"], 2)
        self.results["rle"] = out
        log.info("rle %s", out)

    # ------------------------------------------------------------------ data path per core
    def section_data(self) -> None:
        from steelseg.dataset import SteelDataset, train_transform

        a, d = self.args, self.data()
        rows = split_rows(d["prepared"], "train")
        n = min(a.data_samples, len(rows))
        rows = rows.iloc[:n]
        images, masks, idx = cache_arrays(d["prepared"], DATA_SIZE, "train")
        mean, std = reference_stats(a)
        datasets = {
            "cached": SteelDataset(
                rows,
                d["root"],
                DATA_SIZE,
                transform=train_transform(**AUGMENT),
                cache=(images, masks, idx[:n]),
            ),
            "jpeg": SteelDataset(rows, d["root"], DATA_SIZE, transform=train_transform(**AUGMENT)),
            "reference_style": ReferenceStyleDataset(
                rows, d["root"], DATA_SIZE, True, a.in_channels, mean, std
            ),
        }
        out: dict[str, Any] = {"size": list(DATA_SIZE), "samples": n, "threads": 1}
        with one_core():
            for name, ds in datasets.items():
                loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=0)
                best = float("inf")
                for _ in range(2):  # best of 2: the second pass reads the files from page cache
                    t = time.perf_counter()
                    for _batch in loader:
                        pass
                    best = min(best, time.perf_counter() - t)
                out[f"{name}_images_per_s"] = per_s(n, best)
        out["cached_over_jpeg"] = round(out["cached_images_per_s"] / out["jpeg_images_per_s"], 2)
        out["cached_over_reference_style"] = round(
            out["cached_images_per_s"] / out["reference_style_images_per_s"], 2
        )
        out["what"] = (
            "one process, one thread: a DataLoader (num_workers=0, batch 8) over the train split "
            "with the training augmentations; cached = the uint8 memory-mapped cache, jpeg = "
            "cv2 decode + INTER_AREA resize + RLE decode per sample, reference_style = colour "
            "decode + per-run RLE loop + albumentations Resize/flip/Normalize to float32"
        )
        self.results["data_path"] = out
        log.info("data %s", out)

    # ------------------------------------------------------------------ memory
    def section_memory(self) -> None:
        from steelseg import prepare as prep
        from steelseg.config import auto_precision
        from steelseg.dataset import SteelDataModule

        a = self.args
        root = synthetic_set(self.work / "memory-synthetic", a.memory_images)
        prepared = self.work / "memory-prepared"
        crop = None if self.size == DATA_SIZE else list(self.size)
        dm = SteelDataModule(
            str(root), str(prepared), n_images=None, split=(0.8, 0.1, 0.1),
            height=DATA_SIZE[0], width=DATA_SIZE[1], cache=True,
            augment=AUGMENT | {"crop": crop}, batch_size=a.batch, num_workers=0,
        )  # fmt: skip
        dm.prepare_data()
        folder = prep.cache_dir(prepared, DATA_SIZE)
        cache_mb = sum((folder / f).stat().st_size for f in ("images.npy", "masks.npy")) / 2**20
        n_train = len(split_rows(prepared, "train"))
        train_cache_mb = cache_mb * n_train / a.memory_images
        module = make_module(a)
        trainer = pl.Trainer(
            accelerator="gpu" if self.cuda else "cpu", devices=1, max_epochs=1,
            limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
            precision=auto_precision("gpu" if self.cuda else "cpu"),
        )  # fmt: skip
        if self.cuda:
            torch.zeros(1, device=self.device)  # the CUDA context is not the data's memory
        before = rss_mb()
        out: dict[str, Any] = {}
        with self.peaks.section(out):
            trainer.fit(module, datamodule=dm)
        after = rss_mb()
        peak = out.pop("peak_rss_mb")
        growth = peak - before["rss"]
        out |= {
            "images": a.memory_images,
            "train_images": n_train,
            "cache_mb": round(cache_mb, 1),
            "train_cache_mb": round(train_cache_mb, 1),
            "cache_loading": "np.load(mmap_mode='r'): file-backed pages, shared by workers",
            "rss_before_mb": round(before["rss"], 1),
            "rss_peak_mb": round(peak, 1),
            "rss_growth_mb": round(growth, 1),
            "overhead_mb": round(growth - train_cache_mb, 1),
            "anon_growth_mb": round((after["anon"] or 0) - (before["anon"] or 0), 1),
            "file_growth_mb": round((after["file"] or 0) - (before["file"] or 0), 1),
            "peak_window_reset": self.peaks.resettable,
            "what": f"one training epoch (Lightning, num_workers=0, crop {crop or 'none'}) over "
            f"{n_train} images cached at {DATA_SIZE[0]}x{DATA_SIZE[1]}",
        }
        self.results["memory"] = out
        log.info("memory %s", out)

    # ------------------------------------------------------------------ (r) runtimes
    def section_runtimes(self) -> None:
        from steelseg.runtime import DICE_TOLERANCE, cpu_name, native_bf16, native_int8, versions

        a = self.args
        threads = a.runtime_threads or available_cores()
        out: dict[str, Any] = {
            "cpu": cpu_name(),
            "native_bf16": native_bf16(),
            "native_int8": native_int8(),
            "versions": versions(),
            "threads": threads,
            "size": list(FULL_SIZE),
            "batches": a.runtime_batches,
            "tolerance": DICE_TOLERANCE,
            "rows": [],
            "models": {},
            "what": "images/s of the fastest call after a warm-up one (mean_images_per_s: over "
            "all calls): model only = the network-size uint8 batch straight to the engine; "
            "strip = Predictor.predict_proba on random 256x1600 strips (resize to the input "
            "size, network, sigmoid, resize back); speedup = over PyTorch eager fp32 at the same "
            "batch; dice_diff / iou_diff = the variant's per-image Dice / pixel IoU on the test "
            "split minus PyTorch fp32's",
        }
        rng = np.random.default_rng(0)
        strips = list(rng.integers(0, 256, (max(a.runtime_batches), *FULL_SIZE), dtype=np.uint8))
        folder = self.work / "runtimes" / "strips"
        shutil.rmtree(folder, ignore_errors=True)
        strip_folder(folder, a.runtime_images)
        with cores(threads):
            for spec in self.runtime_models():
                info, rows = self.runtime_model(spec, strips, folder)
                out["models"][spec["name"]] = info
                out["rows"] += rows
                gc.collect()
        self.results["runtimes"] = out

    def runtime_models(self) -> list[dict[str, Any]]:
        """The section's models (``--runtime-models``): each a checkpoint, trained (given,
        copied into the work folder) or an untrained network of the same shape."""
        a = self.args
        models = {
            "resnext50": (a.resnext_ckpt, self.untrained_resnext),
            "quickstart": (a.quickstart_ckpt, self.untrained_quickstart),
        }
        specs = []
        for name in a.runtime_models:
            given, untrained = models[name]
            folder = self.work / "runtimes" / name
            shutil.rmtree(folder, ignore_errors=True)  # a reused --workdir: measure afresh
            folder.mkdir(parents=True)
            ckpt = stage_run(Path(given), folder) if given else untrained(folder)
            specs.append(
                {
                    "name": name,
                    "folder": folder,
                    "checkpoint": ckpt,
                    "given": given,
                    "trained": bool(given),
                }
            )
        return specs

    def untrained_resnext(self, folder: Path) -> Path:
        """FPN/resnext50_32x4d (3 input channels) for full 256x1600 strips, untrained."""
        from steelseg.model import SteelSegModule

        module = SteelSegModule(**RESNEXT, encoder_weights=None, input_size=list(FULL_SIZE))
        return save_untrained(module, folder / "untrained.ckpt")

    def untrained_quickstart(self, folder: Path) -> Path:
        """The network of ``steelseg-train experiment=quickstart`` (its composed config),
        untrained; with --smoke at the smoke size instead of 128x800."""
        from steelseg import config
        from steelseg.train import build

        a = self.args
        size = [f"data.height={a.height}", f"data.width={a.width}"] if a.smoke else []
        cfg = config.compose(["experiment=quickstart", *size], output_dir=folder)
        return save_untrained(build(cfg.model), folder / "untrained.ckpt")

    def runtime_model(
        self, spec: dict[str, Any], strips: list[np.ndarray], folder: Path
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One model on every variant here, then the automatic choice and steelseg-predict."""
        from steelseg.evaluate import labelled_sources
        from steelseg.postprocess import load_tuned

        ckpt = spec["checkpoint"]
        tuned = load_tuned(ckpt)
        spec["postprocess"], spec["tta"] = tuned if tuned else (None, ())
        test = labelled_sources(ckpt, "test", None, None) if spec["trained"] else None
        info: dict[str, Any] = {
            "checkpoint": str(spec["given"]) if spec["given"] else None,
            "trained": spec["trained"],
            "tta": list(spec["tta"]),
            "test_images": len(test[0]) if test else None,
            "skipped": {},
            "export_s": {},
        }
        if test is None:
            info["accuracy_note"] = (
                "not measured: an untrained network (pass --quickstart-ckpt / --resnext-ckpt: "
                "a trained checkpoint in its run folder)"
                if not spec["trained"]
                else "not measured: no labelled test split found for the checkpoint's run"
            )
        rows: list[dict[str, Any]] = []
        with self.peaks.section(info):
            files = self.runtime_exports(spec, info)
            ref = None
            for variant in RUNTIME_VARIANTS:
                reason = self.runtime_skip(variant, files, info)
                if reason:
                    info["skipped"][variant["name"]] = reason
                    continue
                try:
                    predictor = self.runtime_predictor(spec, variant, files)
                except (ValueError, RuntimeError) as e:  # a runtime that cannot run it here
                    info["skipped"][variant["name"]] = f"could not open it: {e}"
                    continue
                if predictor.module is not None:
                    info.setdefault("model", self.runtime_describe(predictor.module.hparams))
                scores = self.runtime_accuracy(predictor, test)
                ref = ref or scores  # PyTorch eager fp32 comes first
                for batch in self.args.runtime_batches:
                    row = {"model": spec["name"], "variant": variant["name"], "batch": batch}
                    row |= {"runtime": predictor.runtime, "precision": predictor.precision}
                    row |= self.runtime_speed(predictor, strips, batch)
                    row |= self.runtime_dice(scores, ref)
                    rows.append(row)
                    log.info("runtimes %s", row)
                del predictor
                gc.collect()
            for row in rows:
                base = self.runtime_base(rows, spec["name"], row["batch"])
                row["speedup"] = ratio(row["images_per_s"], base["images_per_s"])
                row["strip_speedup"] = ratio(row["strip_images_per_s"], base["strip_images_per_s"])
            info["auto"], predictor = self.runtime_auto(spec, strips, test, ref, rows)
            info["predict_folder"] = self.runtime_folder(spec, predictor, folder, info["auto"])
        return info, rows

    @staticmethod
    def runtime_base(rows: list[dict[str, Any]], model: str, batch: int) -> dict[str, Any]:
        """The PyTorch eager fp32 row of ``model`` at ``batch``: the baseline of the ratios."""
        name = RUNTIME_VARIANTS[0]["name"]
        return next(
            r for r in rows if (r["model"], r["variant"], r["batch"]) == (model, name, batch)
        )

    @staticmethod
    def runtime_describe(hp: dict[str, Any]) -> str:
        size = hp.get("input_size")
        size = f"{size[0]}x{size[1]}" if size else "the image's size"
        return f"{hp['arch']}/{hp['encoder_name']} in_channels={hp['in_channels']}, input {size}"

    def runtime_exports(self, spec: dict[str, Any], info: dict[str, Any]) -> dict[str, Path]:
        """The ONNX files the ONNX Runtime and OpenVINO variants run (``steelseg.export``, the
        faster torchscript exporter): fp32, and INT8 where the checkpoint's run has a train
        split to calibrate on. A file that cannot be made is noted in ``info``."""
        from steelseg.export import export
        from steelseg.runtime import installed

        files: dict[str, Path] = {}
        info["export_notes"] = notes = {}
        if not (installed("onnxruntime") or installed("openvino")):
            return files
        for precision in ("fp32", "int8"):
            if precision == "int8" and not spec["trained"]:
                notes[precision] = (
                    "INT8 calibrates on the train split of a trained checkpoint's run; pass "
                    "--quickstart-ckpt / --resnext-ckpt"
                )
                continue
            out = spec["folder"] / "exports" / f"{precision}.onnx"
            t = time.perf_counter()
            try:
                export(
                    spec["checkpoint"], out, "onnx", onnx_exporter="torchscript",
                    use_tuned=False, precision=precision,
                    calibration_images=self.args.calibration_images, check=False,
                )  # fmt: skip
            except (ValueError, RuntimeError, OSError) as e:
                notes[precision] = f"the {precision} export failed: {e}"
                log.warning("runtimes: %s", notes[precision])
                continue
            info["export_s"][precision] = round(time.perf_counter() - t, 1)
            files[precision] = out
        return files

    @staticmethod
    def runtime_skip(
        variant: dict[str, Any], files: dict[str, Path], info: dict[str, Any]
    ) -> str | None:
        """Why ``variant`` does not run here, or None."""
        from steelseg.runtime import cpu_name, installed, native_bf16

        if variant["precision"] == "bf16" and not native_bf16():
            return f"this CPU ({cpu_name()}) has no native bf16 (amx_bf16 / avx512_bf16)"
        if not installed(variant["runtime"]):
            return f"{variant['runtime']} is not installed"
        export = variant.get("export")
        if export and export not in files:
            return info["export_notes"].get(export, f"no {export} export")
        return None

    def runtime_predictor(self, spec: dict[str, Any], variant: dict[str, Any], files):
        """The variant's Predictor, with the checkpoint's (tuned) post-processing and flips."""
        from steelseg.model import SteelSegModule
        from steelseg.predict import Predictor

        pp, tta = spec["postprocess"], spec["tta"]
        if variant["runtime"] == "torch":
            cl = variant["channels_last"]
            kwargs = {} if cl is None else {"channels_last": cl}
            module = SteelSegModule.load_from_checkpoint(spec["checkpoint"], **kwargs)
            return Predictor(module, "cpu", pp, tta, precision=variant["precision"])
        return Predictor.from_export(
            files[variant["export"]], variant["runtime"], variant["precision"], postprocess=pp,
            tta=tta, use_tuned=False, threads=self.args.runtime_threads or available_cores(),
        )  # fmt: skip

    def runtime_speed(self, predictor, strips: list[np.ndarray], batch: int) -> dict[str, Any]:
        """Model-only images/s (the network-size batch straight to the engine) and the
        Predictor's images/s on full strips, at ``batch``: of the fastest call (steady on a
        shared machine), and over all calls (``mean_images_per_s``)."""
        seconds = self.args.runtime_seconds
        x = np.stack([predictor.network_input(s) for s in strips[:batch]])[:, None]
        x = x.astype(predictor.engine.input_dtype or x.dtype, copy=False)
        model = call_seconds(lambda: predictor.engine(x), seconds)
        predictor.batch_size = batch
        strip = call_seconds(  # the engine is warm at this batch already
            lambda: predictor.predict_proba(strips[:batch]), seconds, warmup=False
        )
        return {
            "images_per_s": per_s(batch, min(model)),
            "mean_images_per_s": per_s(batch * len(model), sum(model)),
            "calls": len(model),
            "strip_images_per_s": per_s(batch, min(strip)),
        }

    def runtime_accuracy(self, predictor, test) -> dict[str, Any] | None:
        """Per-image Dice and pixel IoU on the labelled test split (None: none to score on)."""
        from steelseg.evaluate import score_predictor

        if test is None:
            return None
        predictor.batch_size = max(self.args.runtime_batches)
        return score_predictor(predictor, *test)

    @staticmethod
    def runtime_dice(scores: dict[str, Any] | None, ref: dict[str, Any] | None) -> dict[str, Any]:
        """A variant's Dice and IoU columns beside PyTorch fp32's (None: not measured)."""
        from steelseg.evaluate import runtime_check
        from steelseg.runtime import DICE_TOLERANCE

        if scores is None or ref is None:
            return dict.fromkeys(("dice_per_image", "iou", "dice_diff", "iou_diff", "dice_ok"))
        check = runtime_check(ref, scores, DICE_TOLERANCE)
        return {
            "dice_per_image": round(check["dice_per_image"], 4),
            "iou": round(check["iou"], 4),
            "dice_diff": round(-check["dice_drop"], 4) + 0.0,  # + 0.0: no -0.0
            "iou_diff": round(-check["iou_drop"], 4) + 0.0,
            "dice_ok": check["ok"],
        }

    def runtime_auto(self, spec, strips, test, ref, rows) -> tuple[dict[str, Any], Any]:
        """What ``steelseg.deploy.load_predictor(checkpoint)`` (``--runtime auto``) picks and
        how long the choice took; its speed and accuracy are those of the same variant measured
        above (the same engine on the same export), else measured here."""
        from steelseg.deploy import load_predictor

        t = time.perf_counter()
        predictor = load_predictor(spec["checkpoint"], device="cpu")
        choice = predictor.choice or {}
        variant = runtime_variant(predictor)
        same = [r for r in rows if (r["model"], r["variant"]) == (spec["name"], variant)]
        out: dict[str, Any] = {
            "runtime": predictor.runtime,
            "precision": predictor.precision,
            "variant": variant,
            "measured_as": variant if same else None,
            "choose_s": round(time.perf_counter() - t, 1),
            "choice_speedup": round(choice["speedup"], 2) if choice.get("speedup") else None,
            "reason": choice.get("reason"),
            "batches": [],
        }
        speed_keys = ("images_per_s", "mean_images_per_s", "strip_images_per_s", "speedup")
        speed_keys += ("strip_speedup",)
        for batch in self.args.runtime_batches:
            row = {"batch": batch}
            if same:
                row |= {k: next(r for r in same if r["batch"] == batch)[k] for k in speed_keys}
            else:
                row |= self.runtime_speed(predictor, strips, batch)
                base = self.runtime_base(rows, spec["name"], batch)
                row["speedup"] = ratio(row["images_per_s"], base["images_per_s"])
                row["strip_speedup"] = ratio(row["strip_images_per_s"], base["strip_images_per_s"])
            out["batches"].append(row)
        dice_keys = ("dice_per_image", "iou", "dice_diff", "iou_diff", "dice_ok")
        if same:
            out |= {k: same[0][k] for k in dice_keys}
        else:
            out |= self.runtime_dice(self.runtime_accuracy(predictor, test), ref)
        log.info("runtimes auto %s", out)
        return out, predictor

    def runtime_folder(self, spec, predictor, folder: Path, auto: dict[str, Any]) -> dict[str, Any]:
        """``steelseg-predict`` (predict_to_folder: read, predict, masks, overlays, CSV) over
        the folder of strips with the automatic choice, against its model-only images/s (the
        mean over calls: the folder's is a mean too)."""
        from steelseg.predict import collect_inputs, predict_to_folder

        batch = max(self.args.runtime_batches)
        model = next(r for r in auto["batches"] if r["batch"] == batch)["mean_images_per_s"]
        sources, _ = collect_inputs([folder])
        out = spec["folder"] / "predict"
        shutil.rmtree(out, ignore_errors=True)
        predictor.batch_size = batch
        summary = predict_to_folder(predictor, sources, out, progress=False)
        row = {
            "images": summary["images"],
            "batch": batch,
            "runtime": summary["runtime"],
            "precision": summary["precision"],
            "seconds": summary["seconds"],
            "images_per_s": summary["images_per_second"],
            "model_images_per_s": model,
            "over_model": ratio(summary["images_per_second"], model, 3),
        }
        log.info("runtimes predict folder %s", row)
        return row

    # ------------------------------------------------------------------ summary
    def summarise(self) -> None:
        r, a = self.results, self.args
        fast = self.variants()
        # (b) runs steelseg's defaults: the fastest eager variant is its ceiling
        fast_name = [v["name"] for v in fast if not v["compile"]][-1]

        def pick(rows, **where):
            return next(
                (x for x in rows or [] if all(x.get(k) == v for k, v in where.items())), None
            )

        ratios: dict[str, Any] = {}
        model = r.get("model_step")
        b = pick(r.get("steelseg_loop"), batch=a.batch, compile=None)
        c = pick(r.get("reference_loop"), batch=a.batch)
        a_fast = pick(model, batch=a.batch, variant=fast_name)
        if b and a_fast:
            ratios["b_over_a"] = round(b["train_images_per_s"] / a_fast["images_per_s"], 3)
            ratios["a_variant"] = fast_name
        if b and c:
            ratios["b_over_c"] = round(b["train_images_per_s"] / c["train_images_per_s"], 3)
        inf = r.get("inference")
        if inf and inf.get("predictor"):
            best = max(v["images_per_s"] for v in inf["model_only"].values())
            fp32 = inf["model_only"]["fp32"]["images_per_s"]
            ratios["predictor_over_model"] = round(inf["predictor"]["images_per_s"] / best, 3)
            ratios["predictor_over_model_fp32"] = round(inf["predictor"]["images_per_s"] / fp32, 3)
        if r.get("data_path"):
            ratios["cached_over_jpeg"] = r["data_path"]["cached_over_jpeg"]
        r["ratios"] = ratios

        sb = a.reference_batch
        recipe: dict[str, Any] = {"recipe": REFERENCE_RECIPE}
        recipe["steelseg_s"] = project_reference_recipe(
            pick(r.get("steelseg_loop"), batch=sb, compile=None)
        )
        if a.compile:
            recipe["steelseg_compile_s"] = project_reference_recipe(
                pick(r.get("steelseg_loop"), batch=sb, compile=a.compile)
            )
        recipe["reference_style_s"] = project_reference_recipe(
            pick(r.get("reference_loop"), batch=sb)
        )
        for v in fast:
            row = pick(model, batch=sb, variant=v["name"])
            if row:
                n = REFERENCE_RECIPE["train_images"] * REFERENCE_RECIPE["epochs"]
                recipe[f"pure_model_{v['name']}_s"] = round(n / row["images_per_s"], 1)
        r["reference_recipe"] = recipe
        r["peak"] = {
            "host_rss_mb": round(max(self.peaks.host_mb, peak_rss_mb() or 0.0), 1),
            "gpu_mb": round(self.peaks.gpu_mb, 1) if self.cuda else None,
        }


class EpochTimer(pl.Callback):
    """Times each epoch's training and validation (GPU-synchronised) inside a Lightning fit."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.epochs: list[dict[str, float]] = []
        self.cur: dict[str, float] = {}

    def _close(self, t: float) -> None:
        if self.cur:
            self.cur["wall_s"] = t - self.cur["start"]
            self.epochs.append(self.cur)
            self.cur = {}

    def on_train_epoch_start(self, trainer, module) -> None:
        t = now(self.device)
        self._close(t)
        self.cur = {"start": t, "train_images": 0}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.cur["train_images"] += len(batch["image"])

    def on_validation_epoch_start(self, trainer, module) -> None:
        if self.cur and not trainer.sanity_checking:
            self.cur["val_start"] = now(self.device)
            self.cur["train_s"] = self.cur["val_start"] - self.cur["start"]
            self.cur["val_images"] = 0

    def on_validation_batch_end(self, trainer, module, outputs, batch, *args) -> None:
        if self.cur and not trainer.sanity_checking:
            self.cur["val_images"] += len(batch["image"])

    def on_validation_epoch_end(self, trainer, module) -> None:
        if self.cur and not trainer.sanity_checking:
            self.cur["val_s"] = now(self.device) - self.cur["val_start"]

    def on_train_epoch_end(self, trainer, module) -> None:
        if "train_s" not in self.cur:  # no validation this epoch
            self.cur["train_s"] = now(self.device) - self.cur["start"]

    def on_train_end(self, trainer, module) -> None:
        self._close(now(self.device))


# ----------------------------------------------------------------------------- table
def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        v = f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return f"{v}{unit}"


def table(results: dict[str, Any]) -> str:
    """The printed summary: one line per measurement, the targets beside them."""
    m = results["meta"]
    lines = [
        f"steelseg benchmark on {m['device_name']} ({m['device']}, {m['cpu_count']} CPU cores, "
        f"torch {m['torch']}); model {m['model']}, training at {m['size'][0]}x{m['size'][1]}",
        f"{'measurement':55s} {'batch':>5s}  {'value':>14s}  note",
    ]

    def add(name: str, batch: Any, value: str, note: str = "") -> None:
        lines.append(f"{name:55s} {fmt(batch):>5s}  {value:>14s}  {note}")

    for row in results.get("model_step", []):
        add(f"(a) model-only train step, {row['variant']}", row["batch"],
            fmt(row["images_per_s"], " img/s"), f"{row['step_ms']} ms/step")  # fmt: skip
    for row in results.get("steelseg_loop", []):
        name = "(b) steelseg loop, train" + (
            f" +compile={row['compile']}" if row["compile"] else ""
        )
        add(name, row["batch"], fmt(row["train_images_per_s"], " img/s"),
            f"val {fmt(row['val_images_per_s'])} img/s, {row['precision']}, "
            f"+{row['epoch_overhead_s']} s/epoch")  # fmt: skip
    for row in results.get("reference_loop", []):
        add("(c) reference-style loop, train", row["batch"],
            fmt(row["train_images_per_s"], " img/s"),
            f"val {fmt(row['val_images_per_s'])} img/s, fp32, {row['num_workers']} workers")  # fmt: skip
    inf = results.get("inference")
    if inf:
        for name, row in inf["model_only"].items():
            add(f"(d) inference 256x1600, model only, {name}", inf["batch"],
                fmt(row["images_per_s"], " img/s"))  # fmt: skip
        if inf.get("predictor"):
            add("(d) inference 256x1600, Predictor", inf["batch"],
                fmt(inf["predictor"]["images_per_s"], " img/s"))  # fmt: skip
        else:
            add("(d) inference 256x1600, Predictor", inf["batch"], "skipped", inf["predictor_note"])
    rle = results.get("rle")
    if rle:
        add("(e) RLE decode (per-run loop)", None, f"{rle['decode_us']} us",
            f"loop {rle['decode_loop_us']} us: {rle['decode_speedup']}x (target >= 3x)")  # fmt: skip
        add("(e) RLE encode (np.where)", None, f"{rle['encode_us']} us",
            f"np.where {rle['encode_where_us']} us: {rle['encode_speedup']}x (target >= 1x)")  # fmt: skip
    dp = results.get("data_path")
    if dp:
        add("data path per core, uint8 cache", 8, fmt(dp["cached_images_per_s"], " img/s"),
            f"at {dp['size'][0]}x{dp['size'][1]}")  # fmt: skip
        add("data path per core, JPEG decode", 8, fmt(dp["jpeg_images_per_s"], " img/s"),
            f"cached/jpeg {dp['cached_over_jpeg']}x (target >= 3x)")  # fmt: skip
        add("data path per core, reference-style", 8,
            fmt(dp["reference_style_images_per_s"], " img/s"),
            f"cached/reference-style {dp['cached_over_reference_style']}x")  # fmt: skip
    mem = results.get("memory")
    if mem:
        add(f"memory: 1 epoch over {mem['train_images']} cached images", None,
            fmt(mem["rss_growth_mb"], " MB"),
            f"peak RSS growth; train cache {mem['train_cache_mb']} MB, "
            f"overhead {mem['overhead_mb']} MB, heap {mem['anon_growth_mb']} MB")  # fmt: skip
    runtimes_table(results.get("runtimes"), add)
    ratios = results.get("ratios", {})
    targets = {"b_over_a": ">= 0.9 (GPU, batch 32)", "b_over_c": ">= 1.6 (GPU, batch 32)",
               "predictor_over_model": ">= 0.9", "cached_over_jpeg": ">= 3"}  # fmt: skip
    for k, target in targets.items():
        if k in ratios:
            add(f"ratio {k.replace('_over_', '/')}", None, fmt(ratios[k]), f"target {target}")
    rec = results.get("reference_recipe", {})
    for k, v in rec.items():
        if k.endswith("_s") and v is not None:
            target = " (target <= 60 s on one H100/H200)" if k == "steelseg_s" else ""
            add(f"reference recipe (800 x 30 ep + val) {k[:-2]}", m["args"]["reference_batch"],
                fmt(v, " s"), "projected" + target)  # fmt: skip
    peak = results.get("peak", {})
    add("peak host RSS / peak GPU memory", None, fmt(peak.get("host_rss_mb"), " MB"),
        f"GPU {fmt(peak.get('gpu_mb'), ' MB')}")  # fmt: skip
    return "\n".join(lines)


def runtimes_table(rt: dict[str, Any] | None, add: Callable[..., None]) -> None:
    """The runtimes section's lines of the table (see :func:`table`)."""
    if not rt:
        return
    installed = ", ".join(f"{k} {v}" for k, v in rt["versions"].items() if v)
    add(f"(r) CPU runtimes on {rt['cpu']}", None, f"{rt['threads']} threads",
        f"{installed}; native bf16 {'yes' if rt['native_bf16'] else 'no'}")  # fmt: skip
    for name, info in rt["models"].items():
        accuracy = info.get("accuracy_note") or f"Dice on {info['test_images']} test images"
        add(f"(r) {name} model", None, "", f"{info.get('model')}; {accuracy}")
        for row in (r for r in rt["rows"] if r["model"] == name):
            dice = "" if row["dice_diff"] is None else (
                f"; Dice {row['dice_per_image']:.4f} ({row['dice_diff']:+.4f})"
            )  # fmt: skip
            add(f"(r) {name} {row['variant']}, model only", row["batch"],
                fmt(row["images_per_s"], " img/s"),
                f"{fmt(row['speedup'])}x fp32; strips {fmt(row['strip_images_per_s'])} img/s "
                f"({fmt(row['strip_speedup'])}x){dice}")  # fmt: skip
        for variant, reason in info["skipped"].items():
            add(f"(r) {name} {variant}", None, "skipped", reason)
        auto = info["auto"]
        target = RUNTIME_TARGETS.get(name)
        for row in auto["batches"]:
            dice = "" if auto["dice_diff"] is None else f"; Dice {auto['dice_diff']:+.4f}"
            add(f"(r) {name} auto = {auto['runtime']} {auto['precision']}", row["batch"],
                fmt(row["images_per_s"], " img/s"),
                f"{fmt(row['speedup'])}x fp32" + (f" (target >= {target}x)" if target else "")
                + dice)  # fmt: skip
        pf = info["predict_folder"]
        add(f"(r) {name} steelseg-predict, folder of {pf['images']}", pf["batch"],
            fmt(pf["images_per_s"], " img/s"),
            f"{fmt(pf['over_model'])} of its model-only {fmt(pf['model_images_per_s'])} img/s "
            "(target >= 0.9)")  # fmt: skip


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument(
        "--tiny",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tiny model at 64x320 (default on CPU); --no-tiny: the reference's FPN/resnext50",
    )
    p.add_argument("--smoke", action="store_true", help="a few steps of everything (tests)")
    p.add_argument(
        "--sections",
        help=f"of {','.join(SECTIONS)} (default: all; on a GPU all but {','.join(CPU_SECTIONS)})",
    )
    p.add_argument("--json", type=Path, help="write every number to this JSON file")
    p.add_argument("--workdir", type=Path, help="keep data and runs here (default: a temp dir)")
    p.add_argument("--arch", help="smp architecture (steelseg.model.ARCHS)")
    p.add_argument("--encoder", help="smp encoder or tu-<timm model>")
    p.add_argument("--in-channels", type=int, choices=(1, 3))
    p.add_argument("--batch", type=int, help="batch of the ratios (GPU default 32)")
    p.add_argument(
        "--reference-batch",
        "--seed-batch",  # deprecated alias
        dest="reference_batch",
        type=int,
        help="batch of the reference-recipe projection (8); --seed-batch: deprecated alias",
    )
    p.add_argument("--height", type=int, help="training height (multiple of 32)")
    p.add_argument("--width", type=int, help="training width (multiple of 32)")
    p.add_argument("--images", type=int, help="synthetic images for (b), (c), data, rle")
    p.add_argument("--epochs", type=int, help="epochs of (b) and (c); the first is warm-up")
    p.add_argument("--steps", type=int, help="timed steps of (a)")
    p.add_argument("--warmup", type=int, help="untimed steps of (a) first")
    p.add_argument("--workers", type=int, help="DataLoader workers of (b) and (c)")
    p.add_argument(
        "--compile", help="also run (a) and (b) with model.compile=MODE (e.g. reduce-overhead)"
    )
    p.add_argument("--infer-batch", type=int)
    p.add_argument("--infer-steps", type=int)
    p.add_argument("--memory-images", type=int, help="synthetic images of the memory check")
    p.add_argument("--data-samples", type=int, help="samples timed per data path")
    p.add_argument("--rle-rows", type=int)
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: 1 with --tiny on a CPU)"
    )
    p.add_argument(
        "--quickstart-ckpt",
        type=Path,
        help="runtimes: a trained steelseg-train experiment=quickstart checkpoint in its run "
        "folder (accuracy on its test split, INT8); default: an untrained network",
    )
    p.add_argument(
        "--resnext-ckpt",
        type=Path,
        help="runtimes: a trained FPN/resnext50_32x4d checkpoint in its run folder; default: "
        "an untrained network",
    )
    p.add_argument(
        "--runtime-models",
        help=f"runtimes: of {','.join(RUNTIME_MODELS)} (default both; --smoke: quickstart)",
    )
    p.add_argument("--runtime-batches", help="runtimes: batch sizes (default 1,8; --smoke 1,2)")
    p.add_argument("--runtime-images", type=int, help="runtimes: JPEGs of the predict folder")
    p.add_argument(
        "--runtime-seconds", type=float, help="runtimes: least seconds timed per measurement"
    )
    p.add_argument(
        "--runtime-threads", type=int, help="runtimes: threads of every runtime (every core)"
    )
    p.add_argument(
        "--calibration-images", type=int, help="runtimes: train images INT8 calibrates on (64)"
    )
    return p


def resolve_args(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill unset options from the tiny/full profile (and --smoke); validate them."""
    from steelseg.dataset import check_size
    from steelseg.model import compile_mode

    tiny = device.type == "cpu" if args.tiny is None else args.tiny
    profile = dict(TINY if tiny else FULL) | (SMOKE if args.smoke else {})
    for key, value in profile.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.tiny = tiny
    if (args.arch, args.encoder) != (profile["arch"], profile["encoder"]):
        args.arch_kwargs = {}  # the profile's decoder sizes belong to its own network
    check_size(args.height, args.width)
    compile_mode(args.compile)
    for key in (
        "batch",
        "reference_batch",
        "images",
        "epochs",
        "steps",
        "infer_batch",
        "infer_steps",
    ):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}={getattr(args, key)} must be >= 1")
    args.runtime_batches = parse_batches(args.runtime_batches)
    if isinstance(args.runtime_models, str):
        args.runtime_models = [m.strip() for m in args.runtime_models.split(",") if m.strip()]
    bad = set(args.runtime_models) - set(RUNTIME_MODELS)
    if bad or not args.runtime_models:
        raise ValueError(f"--runtime-models: choose from {list(RUNTIME_MODELS)}, got {sorted(bad)}")
    for key in ("runtime_images", "runtime_threads"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}={getattr(args, key)} must be >= 1")
    if args.images < 10 or args.memory_images < 10:
        raise ValueError("--images and --memory-images must be >= 10 (an 80/10/10 split)")
    bad = set(args.sections) - set(SECTIONS)
    if bad:
        raise ValueError(f"unknown section(s) {sorted(bad)}; choose from {list(SECTIONS)}")
    return args


def parse_batches(text: str | list[int]) -> list[int]:
    """``--runtime-batches``: comma-separated batch sizes, each >= 1, sorted."""
    if isinstance(text, list):
        return text
    try:
        batches = sorted({int(b) for b in str(text).split(",") if b.strip()})
    except ValueError:
        batches = []
    if not batches or batches[0] < 1:
        raise ValueError(f"--runtime-batches={text}: give batch sizes >= 1, e.g. 1,8")
    return batches


def parse_sections(text: str) -> list[str]:
    """The comma-separated ``--sections``, deprecated names mapped to the current ones (``seed``:
    ``reference``); unknown names pass through for :func:`resolve_args` to reject."""
    sections = []
    for name in (s.strip() for s in str(text).split(",")):
        if name in SECTION_ALIASES:
            log.warning("--sections %s is deprecated; use %s", name, SECTION_ALIASES[name])
            name = SECTION_ALIASES[name]
        if name and name not in sections:
            sections.append(name)
    return sections


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: use auto, cpu or cuda")
    return device


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen sections and return the results (also written to ``--json``)."""
    device = pick_device(args.device)
    if args.sections is None:
        skip = CPU_SECTIONS if device.type == "cuda" else ()
        args.sections = ",".join(s for s in SECTIONS if s not in skip)
    args.sections = parse_sections(args.sections)
    args.arch_kwargs = None
    args = resolve_args(args, device)
    if args.threads is None and device.type == "cpu" and args.tiny:
        args.threads = 1  # per core: steady on a shared machine, comparable across machines
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="steelseg-bench-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench = Benchmark(args, device, work)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        bench.results["meta"] = {
            "device": str(device),
            "device_name": name or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "model": f"{args.arch}/{args.encoder} in_channels={args.in_channels}",
            "size": [args.height, args.width],
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        }
        t = time.perf_counter()
        for section in SECTIONS:
            if section in args.sections:
                log.info("section %s", section)
                getattr(bench, f"section_{section}")()
                gc.collect()  # Lightning's trainers hold reference cycles
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        bench.results["meta"]["seconds"] = round(time.perf_counter() - t, 1)
        bench.summarise()
    return bench.results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    try:
        results = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        from steelseg.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2, default=str))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
