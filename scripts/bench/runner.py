"""Runs the chosen sections in their fixed order on one :class:`~bench.context.Bench` and
summarises them: what ``scripts/benchmark.py`` calls once its flags are parsed."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import (
    data_path,
    inference,
    memory,
    model_step,
    reference_loop,
    rle,
    runtimes,
    serve,
    steelseg_loop,
)
from bench.context import Bench
from bench.options import (
    CPU_SECTIONS,
    OPT_IN_SECTIONS,
    SECTIONS,
    parse_sections,
    pick_device,
    resolve_args,
)
from bench.summary import summarise

#: each ``--sections`` name and the module whose ``run(bench)`` measures it, in run order
SECTION_MODULES = {
    "model": model_step,
    "steelseg": steelseg_loop,
    "reference": reference_loop,
    "inference": inference,
    "rle": rle,
    "data": data_path,
    "memory": memory,
    "runtimes": runtimes,
    "serve": serve,
}
assert tuple(SECTION_MODULES) == SECTIONS

log = logging.getLogger("benchmark")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen sections and return the results (also written to ``--json``)."""
    device = pick_device(args.device)
    if args.sections is None:
        skip = OPT_IN_SECTIONS + (CPU_SECTIONS if device.type == "cuda" else ())
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
        bench = Bench(args, device, work)
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
        for section, module in SECTION_MODULES.items():
            if section in args.sections:
                log.info("section %s", section)
                module.run(bench)
                gc.collect()  # Lightning's trainers hold reference cycles
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        bench.results["meta"]["seconds"] = round(time.perf_counter() - t, 1)
        summarise(bench)
    return bench.results
