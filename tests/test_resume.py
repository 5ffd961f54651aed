"""Interrupted and failing runs: resume with ckpt_path=last, atomic checkpoints, NaN stops.

The slow test kills a real ``steelseg-train`` with SIGKILL in the middle of an epoch and resumes
it; the fast ones fail a checkpoint write, force a NaN, and resume in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from conftest import tiny_overrides
from steelseg import checkpoint, config, losses
from steelseg.callbacks import NonFiniteLossError
from steelseg.model import SteelSegModule
from steelseg.train import USER_ERRORS, train


def epoch_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def all_finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def temp_files(folder: Path) -> list[Path]:
    return list(folder.rglob("*.tmp"))


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_save_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint.atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_half_way(obj, f):  # writes some bytes, then the "kill" arrives
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    assert checkpoint.load(path)["epoch"] == 1
    assert not temp_files(tmp_path)


def test_stale_temp_files_are_removed(tmp_path):
    (tmp_path / ".last.ckpt.abc123.tmp").write_bytes(b"half")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    assert [p.name for p in checkpoint.remove_temp_files(tmp_path)] == [".last.ckpt.abc123.tmp"]
    assert (tmp_path / "keep.tmp").exists()


def test_failed_save_during_training_keeps_the_last_good_checkpoint(tiny_cfg, monkeypatch):
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 2
    real_save, calls = torch.save, []

    def disk_full_in_epoch_1(obj, f, *args, **kwargs):
        calls.append(obj.get("epoch"))
        if obj.get("epoch") == 1:
            f.write(b"PK\x03\x04 a partial checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", disk_full_in_epoch_1)
    with pytest.raises(OSError, match="No space left on device"):
        train(tiny_cfg)
    assert calls[0] == 0 and calls[-1] == 1  # steelseg's checkpoint writer was used
    ckpts = Path(tiny_cfg.paths.output_dir) / "checkpoints"
    assert epoch_of(ckpts / "last.ckpt") == 0 and all_finite(ckpts / "last.ckpt")
    assert not temp_files(ckpts)
    assert not (Path(tiny_cfg.paths.output_dir) / "metrics.json").exists()


# ----------------------------------------------------------------------------- NaN / inf
def test_nan_loss_stops_the_run_naming_the_step(tiny_cfg, monkeypatch):
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 3
    forward, n_train = losses.WeightedLoss.forward, []

    def nan_on_third_training_step(self, logits, target):
        loss = forward(self, logits, target)
        if torch.is_grad_enabled():
            n_train.append(1)
            if len(n_train) == 3:  # epoch 1, batch 0 (2 batches per epoch)
                return loss * float("nan")
        return loss

    monkeypatch.setattr(losses.WeightedLoss, "forward", nan_on_third_training_step)
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny_cfg)
    message = str(info.value)
    assert message.startswith(
        "the training loss is nan at epoch 1, step 2 (batch 0); training stopped"
    )
    assert "last good checkpoint is" in message and "last.ckpt" in message
    assert isinstance(info.value, USER_ERRORS)  # steelseg-train prints it as one line, exit 2
    last = Path(tiny_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert epoch_of(last) == 0 and all_finite(last)
    assert not (Path(tiny_cfg.paths.output_dir) / "metrics.json").exists()


def test_nan_weights_are_never_checkpointed(tiny_cfg, monkeypatch):
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 3

    def poison_in_epoch_1(self):
        if self.current_epoch == 1 and not self.trainer.sanity_checking:
            with torch.no_grad():
                next(self.net.parameters()).fill_(float("inf"))

    monkeypatch.setattr(SteelSegModule, "on_validation_epoch_start", poison_in_epoch_1)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step 4 \(validation\)"):
        train(tiny_cfg)
    last = Path(tiny_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert epoch_of(last) == 0 and all_finite(last)


# ----------------------------------------------------------------------------- resume
def test_ckpt_path_last_picks_the_newest_run(tmp_path):
    for name, age in (("2024-01-01_10-00-00", 100), ("2024-01-02_10-00-00", 10), ("new", None)):
        ckpts = tmp_path / "runs" / name / "checkpoints"
        ckpts.mkdir(parents=True)
        if age is not None:
            (ckpts / "last.ckpt").write_bytes(b"x")
            os.utime(ckpts / "last.ckpt", (time.time() - age, time.time() - age))
    newest = tmp_path / "runs" / "2024-01-02_10-00-00" / "checkpoints" / "last.ckpt"
    assert checkpoint.resolve("last", tmp_path / "runs" / "new") == newest
    assert checkpoint.resolve(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no run in .* has checkpoints"):
        checkpoint.resolve("last", tmp_path / "elsewhere" / "run")
    with pytest.raises(FileNotFoundError, match="ckpt_path=nothere.ckpt does not exist"):
        checkpoint.resolve("nothere.ckpt", tmp_path)


def test_resume_last_continues_in_the_interrupted_run_folder(synth_root, tmp_path):
    first = tmp_path / "runs" / "first"
    cfg = config.compose(tiny_overrides(synth_root, "test=false"), output_dir=first)
    with open_dict(cfg):
        cfg.data.prepared_dir = str(tmp_path / "prepared")
    train(cfg)
    (first / "checkpoints" / ".last.ckpt.x1y2z3.tmp").write_bytes(b"left by a kill")
    again = config.compose(
        tiny_overrides(synth_root, "test=false", "ckpt_path=last", "trainer.max_epochs=2"),
        output_dir=tmp_path / "runs" / "second",
    )
    with open_dict(again):
        again.data.prepared_dir = str(tmp_path / "prepared")
    metrics = train(again)
    assert metrics["epochs"] == 2
    assert not (tmp_path / "runs" / "second").exists()  # nothing written beside the run
    report = json.loads((first / "metrics.json").read_text())
    assert report["checkpoint"]["best"].startswith(str(first / "checkpoints"))
    assert epoch_of(first / "checkpoints" / "last.ckpt") == 1
    assert not temp_files(first)
    # the log of the first part is kept, the resumed part starts a new file
    before = pd.read_csv(first / "csv" / "metrics-1.csv")
    after = pd.read_csv(first / "csv" / "metrics.csv")
    trained = "train/loss_epoch"
    assert before.dropna(subset=[trained])["epoch"].tolist() == [0]
    assert after.dropna(subset=[trained])["epoch"].tolist() == [1]


def test_resume_needs_trust_for_a_checkpoint_holding_objects(tiny_cfg, tiny_ckpt, tmp_path):
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["note"] = Path("a pathlib object")
    torch.save(ckpt, tmp_path / "shared.ckpt")
    with open_dict(tiny_cfg):
        tiny_cfg.ckpt_path = str(tmp_path / "shared.ckpt")
        tiny_cfg.trainer.max_epochs = 2
        tiny_cfg.test = False
    with pytest.raises(ValueError, match="could run code .* trust_checkpoint=true"):
        train(tiny_cfg)
    assert not (Path(tiny_cfg.paths.output_dir) / "checkpoints").exists()
    with open_dict(tiny_cfg):
        tiny_cfg.trust_checkpoint = True
    assert train(tiny_cfg)["epochs"] == 2


# ----------------------------------------------------------------------------- SIGKILL
class PauseMidEpoch(pl.Callback):
    """Test helper for the subprocess: mark a file, then wait to be killed, mid-epoch."""

    def __init__(self, marker: str, epoch: int = 1, batch: int = 2) -> None:
        self.marker, self.epoch, self.batch = Path(marker), epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self.marker.write_text(f"epoch {trainer.current_epoch} batch {batch_idx}")
            time.sleep(600)


def run_train(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",  # the same threads in every run: the same float sums
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    script = Path(sys.executable).parent / "steelseg-train"
    return subprocess.Popen(
        [str(script), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(synth_root, tmp_path):
    common = [
        *[a for a in tiny_overrides(synth_root) if "limit_train_batches" not in a],
        "+trainer.limit_train_batches=5",
        "trainer.max_epochs=3",
        f"data.prepared_dir={tmp_path / 'prepared'}",
    ]
    ref = run_train([*common, f"hydra.run.dir={tmp_path / 'ref' / 'run'}"], tmp_path)
    ref_log = ref.communicate(timeout=600)[0]
    assert ref.returncode == 0, ref_log[-3000:]

    marker = tmp_path / "paused"
    pause = [
        "+callbacks.pause._target_=test_resume.PauseMidEpoch",
        f"+callbacks.pause.marker={marker}",
    ]
    killed = run_train([*common, *pause, f"hydra.run.dir={tmp_path / 'runs' / 'first'}"], tmp_path)
    deadline = time.time() + 600
    while not marker.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.read_text() == "epoch 1 batch 2", killed.communicate()[0][-3000:]
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    run = tmp_path / "runs" / "first"
    assert epoch_of(run / "checkpoints" / "last.ckpt") == 0  # epoch 0 saved, epoch 1 cut short
    assert not (run / "metrics.json").exists()

    resumed = run_train(
        [*common, "ckpt_path=last", f"hydra.run.dir={tmp_path / 'runs' / 'second'}"], tmp_path
    )
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log[-3000:]
    got = json.loads((run / "metrics.json").read_text())["metrics"]
    want = json.loads((tmp_path / "ref" / "run" / "metrics.json").read_text())["metrics"]
    assert got["epochs"] == want["epochs"] == 3
    for key in ("val/iou", "val/dice", "val/loss", "test/iou", "test/dice"):
        assert got[key] == pytest.approx(want[key], abs=1e-4), key
    assert epoch_of(run / "checkpoints" / "last.ckpt") == 2
    assert not (tmp_path / "runs" / "second" / "checkpoints").exists()
    assert not temp_files(run)


def test_on_a_gpu_the_first_bad_step_is_recorded_and_read_every_n_steps(monkeypatch):
    """The accelerator path (no host sync per step), driven on the CPU with a stand-in trainer."""
    from types import SimpleNamespace

    from steelseg.callbacks import StopOnNonFinite

    monkeypatch.setattr(StopOnNonFinite, "_defer", staticmethod(lambda loss: True))
    cb = StopOnNonFinite(gpu_check_every=4)
    trainer = SimpleNamespace(global_step=0, current_epoch=0, checkpoint_callbacks=[])
    losses_seen = [0.5, 0.4, float("nan"), 0.3, float("inf")]  # first bad: step 2
    for step, value in enumerate(losses_seen):
        trainer.global_step = step
        cb.on_train_batch_start(trainer, None, None, step)
        cb.on_before_backward(trainer, None, torch.tensor(value))
        trainer.global_step = step + 1  # Lightning counts the optimizer step before batch end
        if step < 3:
            cb.on_train_batch_end(trainer, None)  # steps 1-3: not a multiple of 4, not read
    with pytest.raises(NonFiniteLossError) as info:
        cb.on_train_batch_end(trainer, None)  # global step 5 -> no read; epoch end reads it
        cb.on_train_epoch_end(trainer, None)
    assert str(info.value).startswith(
        "the training loss is nan or inf at epoch 0, step 2 (batch 2; noticed at step 5)"
    )
    with pytest.raises(ValueError, match="gpu_check_every must be >= 1"):
        StopOnNonFinite(gpu_check_every=0)
