"""The benchmark's one timing helper: clocks, rates, thread counts and host/GPU memory peaks,
shared by every section."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch


# ----------------------------------------------------------------------------- time
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def per_s(n: float, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else float("nan")


def ratio(value: float | None, base: float | None, digits: int = 2) -> float | None:
    return round(value / base, digits) if value and base else None


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


# ----------------------------------------------------------------------------- profile
#: steps each ``--profile`` profiles
PROFILE_STEPS = 5
#: names of the host calls that launch one GPU kernel each
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


class StepProfile:
    """torch.profiler over a few steps: per step, the wall time, the host time (self CPU time
    of every recorded operation, summed over the host's threads: autograd runs the backward on
    a thread of its own), the kernel launches, the GPU's busy time (its kernels) and the host's
    busiest operations. The profiler's own cost inflates the host times alike for every
    loop profiled, so compare loops with it, not with unprofiled timings."""

    def __init__(self, device: torch.device, top: int = 12) -> None:
        self.device, self.top = device, top
        self.prof: Any = None

    @property
    def active(self) -> bool:
        return self.prof is not None

    def start(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        sync(self.device)
        self.prof = torch.profiler.profile(activities=activities)
        self.prof.start()
        self.t = time.perf_counter()

    def stop(self, steps: int) -> dict[str, Any]:
        sync(self.device)
        wall = time.perf_counter() - self.t
        self.prof.stop()
        events, self.prof = self.prof.key_averages(), None
        steps = max(1, steps)

        def ms(us: float) -> float:
            return round(us / 1000 / steps, 3)

        def device_us(e: Any) -> float:
            return getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)

        def on_gpu(e: Any) -> bool:
            return getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA

        busiest = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: self.top]
        return {
            "steps": steps,
            "wall_ms_per_step": round(wall * 1000 / steps, 2),
            "host_ms_per_step": ms(sum(e.self_cpu_time_total for e in events)),
            "launches_per_step": round(sum(e.count for e in events if e.key in LAUNCHES) / steps),
            # kernels only: an operator's own row repeats the time of the kernels it launched
            "gpu_busy_ms_per_step": ms(sum(device_us(e) for e in events if on_gpu(e))),
            "busiest_host_ops": [
                {
                    "op": e.key[:70],
                    "ms_per_step": ms(e.self_cpu_time_total),
                    "calls_per_step": round(e.count / steps, 1),
                }
                for e in busiest
            ],  # fmt: skip
        }


# ----------------------------------------------------------------------------- cores
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


# ----------------------------------------------------------------------------- memory
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
