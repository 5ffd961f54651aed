"""Section ``inference``, (d): full 256x1600 images, the model alone against
``steelseg.predict.Predictor`` (host->device copy, network, sigmoid, probabilities back).
JSON ``inference``; target: the Predictor >= 0.9 of the model alone."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.context import FULL_SIZE, Bench, make_module, save_untrained
from bench.measure import now, per_s

log = logging.getLogger("benchmark")


def run(bench: Bench) -> None:
    a, dev = bench.args, bench.device
    torch.backends.cudnn.benchmark = True
    out: dict[str, Any] = {"size": list(FULL_SIZE), "batch": a.infer_batch, "model_only": {}}
    n = a.infer_batch * a.infer_steps
    for variant in bench.variants():
        if variant["compile"]:
            continue  # inference from a checkpoint is eager
        row: dict[str, Any] = {}
        with bench.peaks.section(row):
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
        with bench.peaks.section(row):
            ckpt = inference_checkpoint(bench)
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
    bench.results["inference"] = out
    log.info("inference %s", out)


def inference_checkpoint(bench: Bench) -> Path:
    """A checkpoint of the benchmark's network trained at the full 256x1600 size."""
    module = make_module(bench.args, input_size=list(FULL_SIZE))
    return save_untrained(module, bench.work / "full-size.ckpt")
