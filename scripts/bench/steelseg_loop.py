"""Section ``steelseg``, (b): steelseg's real training loop. Synthetic JPEGs on disk, prepared +
uint8 cache, the composed ``train`` config, SteelDataModule, SteelSegModule and a Lightning
Trainer, timed per epoch. JSON ``steelseg_loop``; targets (GPU, batch 32): >= 0.9 of (a)
and >= 1.6x (c). ``--profile``: one more run at ``--batch`` with a few steps under torch.profiler
(JSON ``profile.steelseg_loop``)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch

from bench.context import Bench
from bench.measure import PROFILE_STEPS, StepProfile, epoch_summary, now

log = logging.getLogger("benchmark")


def run(bench: Bench) -> None:
    rows = []
    for batch in bench.batches():
        rows.append(steelseg_loop(bench, batch, None))
        log.info("steelseg %s", rows[-1])
        if bench.args.compile:
            rows.append(steelseg_loop(bench, batch, bench.args.compile))
            log.info("steelseg %s", rows[-1])
    bench.results["steelseg_loop"] = rows
    if bench.args.profile:  # a run of its own: the profiler's cost stays out of the rows above
        profiler = ProfileSteps(bench.device)
        steelseg_loop(bench, bench.args.batch, None, profiler)
        bench.results.setdefault("profile", {})["steelseg_loop"] = profiler.result
        log.info("profile %s", bench.results["profile"])


def steelseg_loop(
    bench: Bench, batch: int, compile_mode: str | None, *extra: pl.Callback
) -> dict[str, Any]:
    from steelseg import config
    from steelseg.train import build, build_all

    a, d = bench.args, bench.data()
    kwargs = ",".join(f"{k}:{v}" for k, v in a.arch_kwargs.items())
    name = f"steelseg-b{batch}" + ("-compile" if compile_mode else "")
    overrides = [
        f"data.root={d['root']}", "data.synthetic=null", "data.n_images=null",
        "data.split=[0.8,0.1,0.1]", f"data.prepared_dir={d['prepared']}",
        f"data.height={a.height}", f"data.width={a.width}", f"data.batch_size={batch}",
        f"data.num_workers={bench.workers()}",
        f"model.arch={a.arch}", f"model.encoder_name={a.encoder}",
        "model.encoder_weights=null", f"model.in_channels={a.in_channels}",
        f"++model.arch_kwargs={{{kwargs}}}", f"model.compile={compile_mode or False}",
        f"trainer.max_epochs={a.epochs}", f"trainer.accelerator={'gpu' if bench.cuda else 'cpu'}",
        "+trainer.enable_model_summary=false", "callbacks.progress_bar=null",
        "+trainer.enable_progress_bar=false",  # as in a batch job: no bar to refresh
    ]  # fmt: skip
    cfg = config.compose(overrides, output_dir=bench.work / "runs" / name)
    timer = EpochTimer(bench.device)
    row: dict[str, Any] = {"batch": batch, "compile": compile_mode}
    with bench.peaks.section(row):
        dm, module = build(cfg.data), build(cfg.model)
        trainer = build(
            cfg.trainer,
            callbacks=[*build_all(cfg.get("callbacks")), timer, *extra],
            logger=build_all(cfg.get("logger")) or False,
        )
        t = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        row["fit_s"] = round(time.perf_counter() - t, 2)
    row |= epoch_summary(timer.epochs, row["fit_s"])
    row |= {
        "precision": str(trainer.precision),
        "channels_last": module.use_channels_last(bench.device),
        "fused": bool(trainer.optimizers[0].defaults.get("fused")),
        "pin_memory": bool(trainer.train_dataloader.pin_memory),
        "num_workers": dm.num_workers,
    }
    return row


class ProfileSteps(pl.Callback):
    """Profiles a few training steps of the second epoch (:class:`StepProfile`): the loop's
    data fetches, hooks and logging as well as the network."""

    def __init__(self, device: torch.device, steps: int = PROFILE_STEPS) -> None:
        self.profile, self.steps, self.done = StepProfile(device), steps, 0
        self.result: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == 1 and self.result is None:
            self.profile.start()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.profile.active:
            self.done += 1
            if self.done == self.steps:
                self.result = self.profile.stop(self.done)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.profile.active:  # an epoch shorter than the steps asked for
            self.result = self.profile.stop(self.done)


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
