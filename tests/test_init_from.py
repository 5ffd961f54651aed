"""``model.init_from``: fine-tuning from a steelseg checkpoint (transfer learning offline).

The source is conftest's ``tiny_ckpt``: a 1-class FPN on mobilenetv3_small, 1 input channel.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import tiny_overrides
from steelseg import checkpoint, config
from steelseg.model import SteelSegModule
from steelseg.train import train

HEAD = "net.segmentation_head."


def source(ckpt: Path) -> tuple[dict, dict]:
    """The hyper-parameters and state dict of a checkpoint."""
    return checkpoint.steelseg_parts(checkpoint.load(ckpt), ckpt)


def like(ckpt: Path, **changes: object) -> SteelSegModule:
    """A new module with the checkpoint's recipe, some values changed, and random weights."""
    hp, _ = source(ckpt)
    return SteelSegModule(**{**hp, "encoder_weights": None, **changes})


def test_a_1_class_checkpoint_starts_a_3_class_model(tiny_ckpt: Path) -> None:
    module = like(tiny_ckpt, classes=3)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    line = module.init_weights_from(tiny_ckpt)
    _, state = source(tiny_ckpt)
    after = module.state_dict()
    body = [k for k in after if not k.startswith(HEAD)]
    assert body and all(torch.equal(after[k], state[k]) for k in body)  # encoder and decoder
    assert after[HEAD + "0.weight"].shape[0] == 3 != state[HEAD + "0.weight"].shape[0]
    assert torch.equal(after[HEAD + "0.weight"], before[HEAD + "0.weight"])  # left as it was
    assert line == (
        f"init_from {tiny_ckpt}: loaded {len(body)} of {len(after)} tensors; "
        "re-initialised: segmentation_head (classes 1 -> 3)"
    )


def test_the_same_class_count_copies_every_tensor(tiny_ckpt: Path) -> None:
    module = like(tiny_ckpt, classes=1)
    line = module.init_weights_from(tiny_ckpt)
    _, state = source(tiny_ckpt)
    own = module.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own) and len(own) == len(state)
    assert line == f"init_from {tiny_ckpt}: loaded {len(own)} of {len(own)} tensors"


def test_a_new_gate_head_is_reinitialised(tiny_ckpt: Path) -> None:
    line = like(tiny_ckpt, classes=4, gate=True).init_weights_from(tiny_ckpt)
    assert line.endswith(
        "re-initialised: segmentation_head (classes 1 -> 4), classification_head (classes 1 -> 4)"
    )


@pytest.mark.parametrize(
    "changes",
    [{"arch": "unet", "arch_kwargs": None}, {"encoder_name": "resnet18"}, {"in_channels": 3}],
)
def test_another_network_is_refused_naming_what_differs(tiny_ckpt: Path, changes: dict) -> None:
    hp, _ = source(tiny_ckpt)
    key = next(iter(changes))
    with pytest.raises(ValueError, match="only model.classes and model.gate may differ") as e:
        like(tiny_ckpt, **changes).init_weights_from(tiny_ckpt)
    assert f"{key}={hp[key]!r}" in str(e.value) and "\n" not in str(e.value)


def test_bad_files_are_refused_in_one_line(tiny_ckpt: Path, tmp_path: Path) -> None:
    module = like(tiny_ckpt, classes=1)
    with pytest.raises(FileNotFoundError, match="model.init_from=null"):
        module.init_weights_from(tmp_path / "gone.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="truncated or not a checkpoint"):
        module.init_weights_from(garbage)
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    with pytest.raises(ValueError, match="is not a steelseg checkpoint.*steelseg-train run"):
        module.init_weights_from(plain)
    hp, state = source(tiny_ckpt)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"hyper_parameters": hp, "state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(ValueError, match="holds no weights of this network"):
        module.init_weights_from(foreign)
    body = next(k for k in state if k.startswith("net.decoder.") and k.endswith("weight"))
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"hyper_parameters": hp, "state_dict": {**state, body: state[body][:1]}}, wrong)
    with pytest.raises(ValueError, match=f"outside the heads .*e.g. {body}"):
        module.init_weights_from(wrong)


def test_a_fine_tuned_run_trains_then_loads_and_resumes_without_its_source(
    tiny_ckpt: Path, synth_root: Path, tmp_path: Path, caplog
) -> None:
    start = tmp_path / "start.ckpt"
    shutil.copy(tiny_ckpt, start)

    def run(*extra: str) -> dict[str, float]:
        overrides = tiny_overrides(synth_root, "test=false", "model.classes=4", *extra)
        cfg = config.compose(overrides, output_dir=tmp_path / "run")
        with open_dict(cfg):
            cfg.data.prepared_dir = str(tmp_path / "prepared")
            cfg.model.init_from = str(start)
        return train(cfg)

    with caplog.at_level(logging.INFO, logger="steelseg.train"):
        assert run()["epochs"] == 1
    assert any("re-initialised: segmentation_head (classes 1 -> 4)" in m for m in caplog.messages)
    start.unlink()  # another machine: the source checkpoint is not there
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    tuned = SteelSegModule.load_from_checkpoint(last)
    assert tuned.hparams.init_from == str(start) and tuned.hparams.classes == 4
    # resuming needs no source either: the run's own checkpoint holds every weight
    assert run(f"ckpt_path={last}", "trainer.max_epochs=2")["epochs"] == 2
    with pytest.raises(FileNotFoundError, match="model.init_from=.* does not exist"):
        run()  # a new fine-tuning run does, and says so before reading any data
