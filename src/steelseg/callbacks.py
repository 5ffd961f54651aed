"""Lightning callbacks of steelseg's own (the rest come from Lightning, see conf/callbacks/).

:class:`StopOnNonFinite` stops a run whose loss or weights stop being finite numbers, before
the bad weights reach a checkpoint, and says where it happened. :class:`RandomState` puts the
random generators' states into checkpoints, so a resumed run draws the batches and
augmentations the interrupted one would have drawn. :class:`RunFolderCheck` is a Hydra
callback: an unwritable run folder ends ``steelseg-train`` with one line, before any work.
"""

from __future__ import annotations

import math
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig


class NonFiniteLossError(FloatingPointError):
    """The training loss (or a weight) became NaN or infinite; the run was stopped."""


class StopOnNonFinite(pl.Callback):
    """Stop training at the first NaN/inf training loss, validation loss or weight.

    On a CPU the training loss is checked before its backward pass, so the weights are never
    updated with it. On a GPU, reading the loss every step would stall the device queue (a
    host sync per step, which costs most at small batches), so the first non-finite step is
    recorded on the device and read every ``gpu_check_every`` steps and at each epoch's end.
    Either way the weights and the validation loss are checked after each validation, before
    ModelCheckpoint (which Lightning always runs last) writes them, so the last good
    ``last.ckpt``/``best-*.ckpt`` stay the newest checkpoints.

    Args:
        gpu_check_every: Steps between reads of the device-side record (1: every step).

    Raises:
        NonFiniteLossError: naming the epoch, the global step and the batch, with remedies.
    """

    def __init__(self, gpu_check_every: int = 50) -> None:
        if gpu_check_every < 1:
            raise ValueError(f"gpu_check_every must be >= 1, got {gpu_check_every}")
        self.gpu_check_every = gpu_check_every
        self.batch_idx = 0
        self._seen: list[tuple[int, int, int]] = []  # (global step, epoch, batch) per loss
        self._first_bad: torch.Tensor | None = None  # index into _seen, -1: none yet

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        loss = loss.detach()
        if not self._defer(loss):
            value = float(loss)
            if not math.isfinite(value):
                self._stop(trainer, f"the training loss is {value}", f"batch {self.batch_idx}")
            return
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        # where each loss came from stays on the host; the device keeps only the index of the
        # first bad one (a Python scalar operand: no host-to-device copy, no sync)
        self._seen.append((trainer.global_step, trainer.current_epoch, self.batch_idx))
        first = (self._first_bad < 0) & ~torch.isfinite(loss)
        self._first_bad = torch.where(first, len(self._seen) - 1, self._first_bad)

    @staticmethod
    def _defer(loss: torch.Tensor) -> bool:
        """Record instead of reading: on an accelerator, where a read waits for the queue."""
        return loss.device.type != "cpu"

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if (trainer.global_step % self.gpu_check_every) == 0:
            self._check_recorded(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_recorded(trainer)

    def _check_recorded(self, trainer: pl.Trainer) -> None:
        if self._first_bad is None:
            return
        first = int(self._first_bad)  # the one sync
        if first < 0:
            self._seen.clear()  # nothing bad so far: indices restart at 0
            return
        step, epoch, batch = self._seen[first]
        self._stop(
            trainer,
            "the training loss is nan or inf",
            f"batch {batch}; noticed at step {trainer.global_step}",
            epoch,
            step,
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._check_recorded(trainer)
        val_loss = trainer.callback_metrics.get("val/loss")
        if val_loss is not None and not math.isfinite(float(val_loss)):
            self._stop(trainer, f"the validation loss is {float(val_loss)}", "validation")
        bad = next(
            (n for n, p in pl_module.named_parameters() if not torch.isfinite(p).all()), None
        )
        if bad is not None:
            self._stop(trainer, f"weight {bad} holds NaN/inf", "validation")

    @staticmethod
    def _stop(
        trainer: pl.Trainer,
        what: str,
        where: str,
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        saved = [
            Path(p)
            for cb in trainer.checkpoint_callbacks
            for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
            if p and Path(p).is_file()
        ]
        last = max(saved, key=lambda p: p.stat().st_mtime_ns, default=None)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"{what} at epoch {trainer.current_epoch if epoch is None else epoch}, "
            f"step {trainer.global_step if step is None else step} ({where}); "
            f"training stopped and {kept}. Lower the learning rate (optimizer.lr), clip "
            "gradients (+trainer.gradient_clip_val=1.0) or check the data"
        )


class RandomState(pl.Callback):
    """Save the torch, CUDA, numpy and Python random states with each checkpoint; restore them.

    Lightning restores weights, optimiser and loop counters on resume but not the random
    generators, so a resumed run would shuffle and augment differently from an uninterrupted
    one. With this callback, resuming from an end-of-epoch checkpoint continues the same random
    sequence: on a CPU with ``data.num_workers=0`` the resumed run is the uninterrupted run
    (DataLoader worker processes keep their own generators, so with workers it is close, not
    equal). The state is stored as tensors and plain numbers, so weights-only loading reads it.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (seeded global)
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))


class RunFolderCheck(HydraCallback):
    """Hydra callback: refuse an unwritable run (or sweep) folder in one line, exit code 2.

    Hydra creates the folder itself and would fail with a traceback; this check runs first.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            print(
                f"{Path(sys.argv[0]).name}: error: cannot write the run folder {folder} "
                f"({e.strerror or e}); choose a writable one with {key}=...",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
