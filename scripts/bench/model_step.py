"""Section ``model``, (a): the model-only training-step ceiling. Random inputs already on the
device, AdamW, Dice loss; on a GPU fp32 (framework defaults) and bf16 + channels_last + fused
AdamW (and ``--compile``). JSON ``model_step``; (b) aims at >= 0.9 of it (GPU, batch 32).
``--profile``: a few more steps of the fastest eager variant at ``--batch`` under torch.profiler
(JSON ``profile.model_step``)."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any

import torch

from bench.context import Bench, make_module
from bench.measure import PROFILE_STEPS, StepProfile, now, per_s, sync

log = logging.getLogger("benchmark")


def run(bench: Bench) -> None:
    rows = []
    torch.backends.cudnn.benchmark = True  # the ceiling: fixed shapes, tuned kernels
    for batch in bench.batches():
        for variant in bench.variants():
            rows.append(model_step(bench, batch, variant))
            log.info("model %s", rows[-1])
    bench.results["model_step"] = rows


def model_step(bench: Bench, batch: int, variant: dict[str, Any]) -> dict[str, Any]:
    """Images/s of forward + Dice loss + backward + AdamW on random inputs on the device."""
    a, dev = bench.args, bench.device
    row: dict[str, Any] = {"batch": batch, "variant": variant["name"]}
    with bench.peaks.section(row):
        module = make_module(
            a, channels_last=variant["channels_last"], compile=variant["compile"] or False
        ).to(dev)
        if variant["channels_last"]:
            module.net.to(memory_format=torch.channels_last)
        if variant["compile"]:
            module.on_fit_start()  # compiles the network in place, as a fit does
        fused = True if bench.cuda and variant["bf16"] else None  # fp32: framework defaults
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=fused)
        x = torch.randint(0, 256, (batch, 1, *bench.size), dtype=torch.uint8, device=dev)
        y = (torch.rand(batch, 1, *bench.size, device=dev) > 0.9).float()
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
    if a.profile and batch == a.batch and variant["name"] == bench.fastest_eager():
        profile = StepProfile(dev)
        profile.start()
        for _ in range(PROFILE_STEPS):
            step()
        bench.results.setdefault("profile", {})["model_step"] = profile.stop(PROFILE_STEPS)
    return row
