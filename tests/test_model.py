"""steelseg.losses and steelseg.model: losses on logits, the LightningModule built from plain values.

Every network here is tiny (timm's mobilenetv3_small with a slim FPN decoder, random weights,
64x64 inputs), and no test goes online: pretrained weights cannot be downloaded here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import huggingface_hub.constants
import pytest
import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

import steelseg.model
import steelseg.train
from steelseg.config import conf_dir
from steelseg.losses import LOSSES, WeightedLoss
from steelseg.model import (
    ARCHS,
    OPTIMIZERS,
    SCHEDULERS,
    SteelSegModule,
    build_network,
)

TINY = {
    "arch": "fpn",
    "encoder_name": "tu-mobilenetv3_small_100",
    "encoder_weights": None,
    "in_channels": 1,
    "arch_kwargs": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
}
SIZE = 64


def tiny(**overrides) -> SteelSegModule:
    return SteelSegModule(**{**TINY, **overrides})


def option(group: str, name: str) -> dict:
    """A config option of conf/<group>/ as the plain dict the module receives."""
    return OmegaConf.to_container(OmegaConf.load(conf_dir() / group / f"{name}.yaml"))


def fixed_batch(n: int = 2, seed: int = 0) -> dict:
    """A batch by the tensor contract: a bright square defect on a noisy grey background."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, SIZE, SIZE)
    mask[:, :, 16:40, 20:44] = 1.0
    image = (100 + 30 * torch.randn(n, 1, SIZE, SIZE, generator=g) + 80 * mask).clamp(0, 255)
    return {
        "image": image.to(torch.uint8),
        "mask": mask,
        "image_id": [f"{i}.jpg" for i in range(n)],
    }


def loader(n: int = 2) -> DataLoader:
    batch = fixed_batch(n)
    items = [{k: v[i] for k, v in batch.items()} for i in range(n)]
    return DataLoader(items, batch_size=n)  # default collate: image_id becomes a list


def one_step_trainer(tmp_path: Path, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        **kw,
    )


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Hugging Face download fail at once, as on this offline machine but without
    huggingface_hub's ~25 s of retries (see test_building_without_weights_does_not_use_the_hub)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# ============================================================================= losses
@pytest.fixture
def target() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(2, 1, 16, 16, generator=g) > 0.6).float()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_ranks_predictions(name: str, target: torch.Tensor) -> None:
    loss = WeightedLoss({name: 1.0})
    good = torch.where(target > 0, 5.0, -5.0)  # logits, confident and right
    unsure = torch.zeros_like(target)  # probability 0.5 everywhere
    values = [loss(x, target) for x in (good, unsure, -good)]
    for v in values:
        assert v.ndim == 0 and torch.isfinite(v)
    assert values[0] < values[1] < values[2]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_has_finite_gradient(name: str, target: torch.Tensor) -> None:
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    logits.requires_grad_(True)
    WeightedLoss({name: 1.0})(logits, target).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_weights_combine_linearly(target: torch.Tensor) -> None:
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(2))
    bce = WeightedLoss({"bce": 1.0})(logits, target)
    dice = WeightedLoss({"dice": 1.0})(logits, target)
    both = WeightedLoss({"bce": 0.5, "dice": 0.5})(logits, target)
    assert both.item() == pytest.approx(0.5 * bce.item() + 0.5 * dice.item(), rel=1e-6)
    assert WeightedLoss({"bce": 3.0})(logits, target).item() == pytest.approx(3 * bce.item())
    assert bce.item() != pytest.approx(dice.item())  # otherwise the sum above proves nothing


def test_kwargs_form_configures_the_loss(target: torch.Tensor) -> None:
    spec = {"tversky": {"weight": 2.0, "alpha": 0.3, "beta": 0.7}}
    loss = WeightedLoss(spec)
    assert loss.weights == {"tversky": 2.0}
    assert (loss.terms["tversky"].alpha, loss.terms["tversky"].beta) == (0.3, 0.7)
    assert spec == {"tversky": {"weight": 2.0, "alpha": 0.3, "beta": 0.7}}  # not consumed
    swapped = WeightedLoss({"tversky": {"weight": 2.0, "alpha": 0.7, "beta": 0.3}})
    # beta weighs false negatives, alpha false positives (smp's Tversky)
    misses = torch.where(target > 0, 0.0, -5.0)  # defects at probability 0.5: half missed
    alarms = torch.where(target > 0, 5.0, 0.0)  # background at 0.5: half false alarms
    assert loss(misses, target) > swapped(misses, target)
    assert loss(alarms, target) < swapped(alarms, target)


def test_kwargs_without_weight_count_once(target: torch.Tensor) -> None:
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    a = WeightedLoss({"focal": {"gamma": 2.0}})(logits, target)
    b = WeightedLoss({"focal": {"weight": 1.0, "gamma": 2.0}})(logits, target)
    assert a.item() == pytest.approx(b.item())


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown loss 'dcie'") as e:
        WeightedLoss({"dcie": 1.0})
    for name in LOSSES:
        assert name in str(e.value)


def test_empty_loss_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="empty") as e:
        WeightedLoss({})
    assert "dice" in str(e.value)


# ============================================================================= network
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_uint8_gives_float_logits(in_channels: int) -> None:
    module = tiny(in_channels=in_channels).eval()
    image = fixed_batch()["image"]
    with torch.no_grad():
        out = module(image)
        as_float = module(image.float())  # float 0..255 is accepted too, same result
    assert image.dtype == torch.uint8
    assert out.shape == (2, 1, SIZE, SIZE)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out, as_float)
    # ImageNet statistics in pixel units (0..255), averaged over channels for grey input
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    if in_channels == 1:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    assert module.mean.shape == module.std.shape == (in_channels, 1, 1)
    assert torch.allclose(module.mean.flatten(), 255 * mean)
    assert torch.allclose(module.std.flatten(), 255 * std)


def test_unknown_arch_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'fnp'") as e:
        tiny(arch="fnp")
    for name in ARCHS:
        assert name in str(e.value)


def test_arch_names_are_case_insensitive() -> None:
    assert isinstance(tiny(arch="FPN").net, smp.FPN)  # what a YAML typo in case still gives


def test_unknown_encoder_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'resnet9999'") as e:
        tiny(encoder_name="resnet9999")
    for name in ("resnet18", "resnext50_32x4d", "efficientnet-b3", "tu-"):
        assert name in str(e.value)


def test_unknown_timm_encoder_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="tu-no_such_model"):
        tiny(encoder_name="tu-no_such_model")


def test_unknown_optimizer_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'") as e:
        tiny(optimizer={"name": "adagrad", "lr": 1e-3})
    for name in OPTIMIZERS:
        assert name in str(e.value)


def test_unknown_scheduler_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'step'") as e:
        tiny(scheduler={"name": "step"})
    for name in SCHEDULERS:
        assert name in str(e.value)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5])
def test_threshold_outside_open_unit_interval_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        tiny(threshold=threshold)


def test_threshold_reaches_the_metrics(tiny_net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steelseg.model, "build_network", lambda *a, **k: copy.deepcopy(tiny_net))
    module = tiny(threshold=0.3)
    assert module.val_metrics.threshold == module.test_metrics.threshold == 0.3


def test_in_channels_must_be_1_or_3() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        tiny(in_channels=2)


# ============================================================================= encoder weights
def test_offline_pretrained_weights_fail_fast_with_the_remedy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(steelseg.model, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(ConnectionError, match="encoder_weights=null") as error:
        build_network("fpn", "resnet18", "imagenet", 3)
    assert isinstance(error.value, steelseg.train.USER_ERRORS)  # one line from steelseg-train


def test_local_encoder_weights_are_loaded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny()
    path = tmp_path / "enc.pth"
    torch.save(source.net.encoder.state_dict(), path)
    torch.manual_seed(1)  # a different random initialisation ...
    loaded = tiny(encoder_weights=str(path))
    fresh = tiny()
    # ... replaced by the saved weights
    want, got = source.net.encoder.state_dict(), loaded.net.encoder.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert not all(torch.equal(want[k], v) for k, v in fresh.net.encoder.state_dict().items())


def test_local_weights_of_an_smp_encoder_are_loaded(tmp_path: Path, hub_offline) -> None:
    torch.manual_seed(0)
    kw = {"arch": "linknet", "encoder_name": "resnet18", "in_channels": 1}
    source = build_network(encoder_weights=None, **kw)
    path = tmp_path / "resnet18.pth"
    torch.save(source.encoder.state_dict(), path)
    loaded = build_network(encoder_weights=str(path), **kw)
    want, got = source.encoder.state_dict(), loaded.encoder.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_local_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="holds no weights"):
        tiny(encoder_weights=str(path))


def test_missing_local_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="enc.pth"):
        tiny(encoder_weights=str(tmp_path / "enc.pth"))


def test_building_without_weights_does_not_use_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise OSError("offline")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", no_network)
    SteelSegModule(arch="linknet", encoder_name="resnet18", encoder_weights=None, in_channels=1)
    assert calls == []


# ============================================================================= training
def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    module = tiny(loss={"bce": 0.5, "dice": 0.5}, optimizer={"name": "adam", "lr": 1e-2}).train()
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    batch = fixed_batch()
    losses = []
    for _ in range(4):
        loss = module.loss_fn(module(batch["image"]), batch["mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = module.loss_fn(module(batch["image"]), batch["mask"]).item()
    assert final < 0.9 * losses[0], losses


@pytest.fixture(scope="module")
def tiny_net() -> torch.nn.Module:
    return build_network(**TINY)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer_and_scheduler_option_fits(
    optimizer: str, scheduler: str, tmp_path: Path, tiny_net, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the network is not under test here: copy one instead of building 15
    monkeypatch.setattr(steelseg.model, "build_network", lambda *a, **k: copy.deepcopy(tiny_net))
    opt_spec, sched_spec = option("optimizer", optimizer), option("scheduler", scheduler)
    module = tiny(optimizer=opt_spec, scheduler=sched_spec)
    trainer = one_step_trainer(tmp_path)
    trainer.fit(module, loader(), loader())
    assert trainer.global_step == 1
    (opt,) = trainer.optimizers
    assert type(opt) is OPTIMIZERS[optimizer]
    assert module.lr == opt_spec["lr"]
    for key, value in opt_spec.items():  # constructor arguments, untouched by schedulers
        if key != "name":
            assert opt.defaults[key] == value, key
    expected = {
        "none": None,
        "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
        "cosine_warm_restarts": torch.optim.lr_scheduler.CosineAnnealingWarmRestarts,
        "onecycle": torch.optim.lr_scheduler.OneCycleLR,
        "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
    }[scheduler]
    configs = trainer.lr_scheduler_configs
    assert [type(c.scheduler) for c in configs] == ([] if expected is None else [expected])
    if scheduler == "onecycle":
        assert configs[0].interval == "step"
    if scheduler == "plateau":
        assert configs[0].monitor == "val/iou"
        assert configs[0].scheduler.mode == "max"


def test_schedulers_take_their_length_from_the_trainer(tiny_net, monkeypatch) -> None:
    monkeypatch.setattr(steelseg.model, "build_network", lambda *a, **k: copy.deepcopy(tiny_net))
    fake = SimpleNamespace(max_epochs=7, estimated_stepping_batches=40)
    with mock.patch.object(SteelSegModule, "trainer", new=fake):
        cosine = tiny(scheduler=option("scheduler", "cosine")).configure_optimizers()
        onecycle = tiny(
            optimizer={"name": "adamw", "lr": 3e-3}, scheduler=option("scheduler", "onecycle")
        ).configure_optimizers()
    assert cosine["lr_scheduler"].T_max == 7
    assert cosine["lr_scheduler"].eta_min == option("scheduler", "cosine")["eta_min"]
    s = onecycle["lr_scheduler"]["scheduler"]
    assert s.total_steps == 40
    assert s.optimizer.param_groups[0]["max_lr"] == 3e-3


def test_plateau_can_monitor_a_loss(tiny_net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steelseg.model, "build_network", lambda *a, **k: copy.deepcopy(tiny_net))
    spec = {"name": "plateau", "monitor": "val/loss", "mode": "min", "patience": 2}
    with mock.patch.object(SteelSegModule, "trainer", new=SimpleNamespace(max_epochs=3)):
        out = tiny(scheduler=spec).configure_optimizers()
    assert out["lr_scheduler"]["monitor"] == "val/loss"
    assert out["lr_scheduler"]["scheduler"].mode == "min"


def test_checkpoint_round_trip_needs_no_hydra(tmp_path: Path, tiny_net) -> None:
    torch.manual_seed(0)
    enc = tmp_path / "enc.pth"
    torch.save(tiny_net.encoder.state_dict(), enc)
    module = tiny(encoder_weights=str(enc), loss={"bce": 0.5, "dice": 0.5}, threshold=0.4)
    module.lr = 1e-2  # move the weights visibly in one step
    trainer = one_step_trainer(tmp_path)
    trainer.fit(module, loader(), loader())
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    enc.unlink()  # the checkpoint holds every weight: the encoder file is no longer needed

    loaded = SteelSegModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert loaded.hparams.arch_kwargs == TINY["arch_kwargs"]
    assert loaded.hparams.loss == {"bce": 0.5, "dice": 0.5}
    assert loaded.val_metrics.threshold == 0.4
    image = fixed_batch(seed=5)["image"]
    module.eval()
    loaded.eval()
    with torch.no_grad():
        want, got = module(image), loaded(image)
    assert want.std() > 0  # outputs that depend on the weights, so equality means something
    assert torch.equal(want, got)
