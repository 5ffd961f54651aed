"""GPU speed defaults (bf16, channels_last, fused optimizer, pinned memory, torch.compile) that
leave CPU runs exactly as they were: fp32, NCHW, the plain optimizer, unpinned loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from conftest import tiny_overrides
from steelseg import config
from steelseg.dataset import SteelDataModule
from steelseg.model import COMPILE_MODES, SteelSegModule, compile_mode

SLIM = {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_module(**kwargs) -> SteelSegModule:
    return SteelSegModule("fpn", "tu-mobilenetv3_small_100", None, 1, SLIM, **kwargs)


def grey(n: int = 2, h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, h, w), dtype=torch.uint8, generator=torch.Generator())


@pytest.fixture
def fake_bf16_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torch report a bf16-capable CUDA GPU (nothing here touches a real one)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("option", ["default", "cpu", "gpu"])
def test_precision_resolves_to_fp32_without_cuda(option: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = config.compose([f"trainer={option}"], output_dir=tmp_path)
    assert cfg.trainer.precision == "32-true"


def test_precision_is_bf16_on_a_bf16_gpu_and_fp32_stays_selectable(
    tmp_path: Path, fake_bf16_gpu
) -> None:
    assert config.compose([], output_dir=tmp_path).trainer.precision == "bf16-mixed"
    assert config.compose(["trainer=gpu"], output_dir=tmp_path).trainer.precision == "bf16-mixed"
    # an explicit CPU run, and an explicit precision, win over the GPU default
    assert config.compose(["trainer=cpu"], output_dir=tmp_path).trainer.precision == "32-true"
    forced = config.compose(["trainer.precision=32-true"], output_dir=tmp_path)
    assert forced.trainer.precision == "32-true"


def test_precision_is_fp32_on_a_gpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert config.auto_precision("gpu") == "32-true"


# ----------------------------------------------------------------------------- loaders
def datamodule(root: Path, tmp_path: Path, **kwargs) -> SteelDataModule:
    kwargs = {"batch_size": 4, "num_workers": 0, "height": 64, "width": 320, **kwargs}
    dm = SteelDataModule(str(root), str(tmp_path / "prepared"), n_images=None, **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def test_loaders_pin_memory_only_for_cuda(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    dm = datamodule(synth_root, tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not dm.train_dataloader().pin_memory
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dm.train_dataloader().pin_memory  # outside a trainer: whenever CUDA is present
    dm.trainer = pl.Trainer(accelerator="cpu", logger=False)  # a CPU run on a CUDA machine
    assert not dm.val_dataloader().pin_memory
    dm.pin_memory = True  # data.pin_memory=true forces it
    assert dm.test_dataloader().pin_memory


def test_loader_workers_persist(synth_root: Path, tmp_path: Path) -> None:
    assert not datamodule(synth_root, tmp_path).train_dataloader().persistent_workers
    loader = datamodule(synth_root, tmp_path, num_workers=1).train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1


# ----------------------------------------------------------------------------- optimizer, layout
def test_cpu_optimizer_and_layout_are_unchanged() -> None:
    module = tiny_module()
    opt = module.configure_optimizers()
    assert type(opt) is torch.optim.AdamW
    assert not opt.defaults.get("fused")
    assert not module.use_channels_last("cpu")
    assert module.use_channels_last("cuda")  # the default: channels_last on a GPU only
    assert not tiny_module(channels_last=False).use_channels_last("cuda")


def test_channels_last_forward_matches_the_default_layout() -> None:
    x = grey()
    ref = tiny_module().eval()
    forced = tiny_module(channels_last=True).eval()
    forced.load_state_dict(ref.state_dict())
    forced.net.to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(forced(x), ref(x), rtol=1e-4, atol=1e-4)


def test_logits_are_float32_under_autocast() -> None:
    module = tiny_module().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert module(grey()).dtype == torch.float32


# ----------------------------------------------------------------------------- compile option
def test_compile_option_values() -> None:
    assert compile_mode(False) is None and compile_mode(None) is None
    assert compile_mode(True) == "default"
    for mode in COMPILE_MODES:
        assert compile_mode(mode) == mode
    with pytest.raises(ValueError, match="reduce-overhead"):
        compile_mode("fast")


@pytest.mark.parametrize("value", ["true", "reduce-overhead", "false"])
def test_compile_option_composes(value: str, tmp_path: Path) -> None:
    cfg = config.compose(
        ["encoder=mobilenetv3_small", "model.encoder_weights=null", f"model.compile={value}"],
        output_dir=tmp_path,
    )
    module = instantiate(cfg.model)
    assert compile_mode(module.hparams.compile) == compile_mode(
        {"true": True, "false": False}.get(value, value)
    )


def test_a_bad_compile_value_fails_at_construction(tmp_path: Path) -> None:
    cfg = config.compose(["model.encoder_weights=null", "model.compile=fast"], output_dir=tmp_path)
    with pytest.raises(Exception, match="model.compile='fast'"):
        instantiate(cfg.model)


@pytest.mark.slow
def test_compiled_cpu_forward_matches_eager() -> None:
    module = tiny_module(compile=True).eval()
    x = grey()
    with torch.no_grad():
        eager = module(x)
        module.on_fit_start()  # where a fit compiles the network (in place)
        compiled = module(x)
    assert module._compiled
    assert list(module.state_dict()) == list(tiny_module().state_dict())  # checkpoints unchanged
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- on a GPU
class Capture(pl.Callback):
    """Records what the fit really used, at the first training batch."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:
            # a weight with several input channels and a kernel wider than 1x1: only there do
            # the two memory formats differ (a 1-channel stem is contiguous in both)
            conv = next(
                m
                for m in module.net.modules()
                if isinstance(m, torch.nn.Conv2d)
                and m.weight.shape[1] > 1
                and m.weight.shape[2] * m.weight.shape[3] > 1
            )
            self.seen = {
                "precision": trainer.precision,
                "channels_last": conv.weight.is_contiguous(memory_format=torch.channels_last),
                "fused": trainer.optimizers[0].defaults.get("fused"),
                "pinned": batch["image"].is_cuda and trainer.train_dataloader.pin_memory,
            }


def gpu_fit(synth_root: Path, tmp_path: Path, *extra: str) -> dict:
    overrides = [o for o in tiny_overrides(synth_root, *extra) if o != "trainer=cpu"]
    cfg = config.compose([*overrides, "trainer=gpu"], output_dir=tmp_path / "run")
    with open_dict(cfg):
        cfg.data.prepared_dir = str(tmp_path / "prepared")
    capture = Capture()
    trainer = instantiate(cfg.trainer, callbacks=[capture], logger=False)
    module, dm = instantiate(cfg.model), instantiate(cfg.data)
    trainer.fit(module, datamodule=dm)
    return capture.seen | {"loss": float(trainer.callback_metrics["train/loss"])}


@pytest.mark.gpu
@needs_cuda
def test_gpu_fit_uses_bf16_channels_last_fused_and_pinned(synth_root: Path, tmp_path: Path):
    seen = gpu_fit(synth_root, tmp_path)
    bf16 = torch.cuda.is_bf16_supported()
    assert seen["precision"] == ("bf16-mixed" if bf16 else "32-true")
    assert seen["channels_last"] and seen["fused"] and seen["pinned"]
    assert torch.isfinite(torch.tensor(seen["loss"]))


@pytest.mark.gpu
@needs_cuda
def test_gpu_fit_in_fp32_when_asked(synth_root: Path, tmp_path: Path) -> None:
    seen = gpu_fit(synth_root, tmp_path, "trainer.precision=32-true", "model.channels_last=false")
    assert seen["precision"] == "32-true" and not seen["channels_last"]


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_gpu_fit_with_cuda_graphs(synth_root: Path, tmp_path: Path) -> None:
    seen = gpu_fit(synth_root, tmp_path, "model.compile=reduce-overhead")
    assert torch.isfinite(torch.tensor(seen["loss"]))
