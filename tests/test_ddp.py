"""trainer=ddp: two CPU processes (gloo) report the same validation metrics as one.

Both runs evaluate the same saved checkpoint (``test_ckpt=PATH``) on the same 6 validation
images, so the only difference is how the images are spread: DDP gives each process 3 and the
metric states (tp, fp, fn, per-image Dice sums) must be summed over processes before dividing.
6 images split evenly: DistributedSampler pads an uneven split by repeating images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import tiny_overrides
from steelseg import config
from steelseg.model import SteelSegModule
from steelseg.segmetrics import SegMetrics

pytestmark = pytest.mark.slow

EVEN_SPLIT = "data.split=[0.6,0.2,0.2]"  # 30 images: 18 / 6 / 6


def val_probs(ckpt: Path, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and masks of the validation images, in loader order (N, 1, H, W)."""
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    module = SteelSegModule(**{**saved["hyper_parameters"], "encoder_weights": None})
    module.load_state_dict(saved["state_dict"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    batches = list(dm.val_dataloader())
    with torch.no_grad():
        probs = torch.cat([module.eval()(b["image"]).sigmoid() for b in batches])
    return probs, torch.cat([b["mask"] for b in batches])


def threshold_in_a_gap(probs: torch.Tensor, window: int = 2000) -> float:
    """A threshold near the median probability (about half the pixels positive, so no metric
    is a trivial 0 or 1) in the widest gap between probabilities around it: rounding
    differences between batchings cannot move a pixel across it."""
    p = probs.flatten().double().sort().values
    mid = len(p) // 2
    near = p[mid - window : mid + window]
    j = int((near[1:] - near[:-1]).argmax())
    return float((near[j] + near[j + 1]) / 2)


def metrics_of(probs: torch.Tensor, masks: torch.Tensor, threshold: float) -> dict[str, float]:
    m = SegMetrics(threshold)
    m.update(torch.logit(probs.clamp(1e-6, 1 - 1e-6)), masks)
    return {f"val/{k}": float(v) for k, v in m.compute().items()}


def run(args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "steelseg.cli.train", *args, f"hydra.run.dir={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_processes_give_the_same_val_metrics_as_one(synth_root, tiny_ckpt, tmp_path):
    base = [
        o
        for o in tiny_overrides(synth_root)
        if not o.startswith(("trainer=", "+trainer.limit_val_batches", "+trainer.limit_train"))
    ]
    base += [
        EVEN_SPLIT,
        f"data.prepared_dir={tmp_path / 'prepared'}",
        "+trainer.limit_train_batches=1",
        "test=false",
        f"test_ckpt={tiny_ckpt}",  # evaluate this checkpoint, not the one-batch fit
    ]
    cfg = config.compose(base, output_dir=tmp_path / "probe")
    probs, masks = val_probs(tiny_ckpt, cfg)
    assert len(masks) == 6
    threshold = threshold_in_a_gap(probs)
    expected = metrics_of(probs, masks, threshold)
    rank0_only = metrics_of(probs[0::2], masks[0::2], threshold)  # what rank 0 alone sees
    # rank 0's images alone give other numbers: a missing reduction would fail the test
    assert all(rank0_only[k] != pytest.approx(expected[k], rel=0.1) for k in expected)

    args = [*base, f"model.threshold={threshold}"]
    one = run([*args, "trainer=cpu"], tmp_path / "one")
    two = run(
        [*args, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], tmp_path / "two"
    )

    assert one["split_sizes"]["val"] == two["split_sizes"]["val"] == 6
    assert (tmp_path / "two" / "train_ddp_process_1.log").exists()  # a second process ran
    for key, value in expected.items():
        assert one["metrics"][key] == pytest.approx(value, rel=1e-3), key
        assert two["metrics"][key] == pytest.approx(value, rel=1e-3), key
