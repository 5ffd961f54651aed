"""Soak: train and evaluate again and again in one process; host memory must not grow."""

from __future__ import annotations

import contextlib
import ctypes
import gc
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import tiny_overrides
from steelseg import config
from steelseg.model import SteelSegModule
from steelseg.train import train

ROUNDS = 6
WARM_UP = 2  # first rounds fill caches (imports, allocator pools, cuDNN-free CPU kernels)
SLACK_MB = 40.0  # allowed growth from the end of warm-up to the last round, all rounds together


def rss_mb() -> float:
    """Resident set size of this process (MB), after returning free heap pages to the system."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # free pages the allocator keeps
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def one_round(root: Path, tmp: Path, i: int) -> float:
    cfg = config.compose(tiny_overrides(root), output_dir=tmp / f"run{i}")
    with open_dict(cfg):
        cfg.data.prepared_dir = str(tmp / "prepared")  # prepared once, reused like real runs
    metrics = train(cfg)  # fit, validate and test the best checkpoint
    module = SteelSegModule.load_from_checkpoint(tmp / f"run{i}" / "checkpoints" / "last.ckpt")
    with torch.inference_mode():
        logits = module.eval()(torch.zeros(4, 1, 64, 320, dtype=torch.uint8))
    assert logits.shape == (4, 1, 64, 320) and metrics["test/iou"] >= 0
    del module, logits, metrics, cfg
    return rss_mb()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc (Linux)")
def test_memory_does_not_grow_run_over_run(synth_root, tmp_path):
    rss = [one_round(synth_root, tmp_path, i) for i in range(ROUNDS)]
    growth = rss[-1] - rss[WARM_UP - 1]
    steps = [b - a for a, b in zip(rss[WARM_UP - 1 :], rss[WARM_UP:])]
    report = ", ".join(f"{v:.0f}" for v in rss)
    print(f"RSS after each round (MB): {report}")  # shown with pytest -s
    assert growth < SLACK_MB, f"RSS grew {growth:.1f} MB after warm-up (MB per round: {report})"
    assert min(steps) < SLACK_MB / (ROUNDS - WARM_UP), f"RSS grows every round: {report}"
