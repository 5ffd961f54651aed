"""Every option of every config group composes with the real config and instantiates.

Options are discovered by listing ``conf/<group>/*.yaml``, so a new option is tested as soon
as it exists, and a new group fails :func:`test_every_group_has_a_check` until it gets one.
Networks are tiny (timm's mobilenetv3_small) except where the option *is* the encoder; weights
are never downloaded (``model.encoder_weights=null``).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import huggingface_hub.constants
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import steelseg.model
from steelseg import config
from steelseg.dataset import SteelDataModule, parse_crop
from steelseg.losses import LOSSES, WeightedLoss
from steelseg.model import ARCHS, OPTIMIZERS, SteelSegModule, build_network
from steelseg.prepare import resolve_split_file
from steelseg.segmetrics import SegMetrics

CONF = config.conf_dir()
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]

# A 1-channel grey network with random weights: ~1M parameters, builds in a fraction of a second.
TINY_MODEL = ["encoder=mobilenetv3_small", "model.encoder_weights=null", "model.in_channels=1"]
SLIM_FPN = [
    "+model.arch_kwargs.decoder_pyramid_channels=32",
    "+model.arch_kwargs.decoder_segmentation_channels=32",
]
# PAN's pyramid attention pools its stride-16 features 8x further: at least 128 px a side.
MIN_SIDE = {"pan": 128}


def logged_metrics() -> set[str]:
    """What the module logs (``val/<SegMetrics key>``, losses): all a callback may monitor."""
    m = SegMetrics()
    m.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    return {f"val/{k}" for k in m.compute()} | {"val/loss", "train/loss"}


LOGGED = logged_metrics()
SCHEDULER_CLASSES = {
    "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
    "cosine_warm_restarts": torch.optim.lr_scheduler.CosineAnnealingWarmRestarts,
    "onecycle": torch.optim.lr_scheduler.OneCycleLR,
    "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
}


def of(group: str) -> list[str]:
    return [o for g, o in OPTIONS if g == group]


@functools.cache
def own_arch_kwargs(model: str) -> object:
    """``model.arch_kwargs`` of ``model=<model>`` alone (composed once per model)."""
    return OmegaConf.to_container(config.compose([f"model={model}"], output_dir="x").model)[
        "arch_kwargs"
    ]


def option_yaml(group: str, option: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))


@pytest.fixture
def compose(tmp_path: Path) -> Callable[..., DictConfig]:
    """The real ``train`` config with overrides; data and outputs inside ``tmp_path``.

    Every interpolation of the result is resolved once, so a broken ``${...}`` in any option
    fails that option's test.
    """

    def make(*overrides: str) -> DictConfig:
        cfg = config.compose(
            [f"paths.data_dir={tmp_path / 'data'}", *overrides], output_dir=tmp_path / "run"
        )
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        return cfg

    return make


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """smp looks up each encoder's normalisation on huggingface.co even without weights (see
    tests/test_model.py); fail those look-ups at once instead of after ~25 s of retries."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def shared_net() -> torch.nn.Module:
    return build_network("fpn", "tu-mobilenetv3_small_100", None, 1)


@pytest.fixture
def reuse_net(shared_net, monkeypatch: pytest.MonkeyPatch) -> None:
    """For options that do not change the network (loss, optimizer, scheduler): copy one tiny
    network instead of building it again."""
    monkeypatch.setattr(steelseg.model, "build_network", lambda *a, **k: copy.deepcopy(shared_net))


def tiny_input(n: int = 1, height: int = 64, width: int = 64, arch: str = "") -> torch.Tensor:
    height, width = (max(v, MIN_SIDE.get(arch, 0)) for v in (height, width))
    return torch.randint(0, 256, (n, 1, height, width), dtype=torch.uint8)


def plain(value) -> bool:
    """Whether ``value`` holds only builtin containers and scalars (no OmegaConf objects)."""
    if isinstance(value, dict):
        return type(value) is dict and all(plain(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def fake_trainer(max_epochs: int = 3, steps: int = 30):
    return mock.patch.object(
        SteelSegModule,
        "trainer",
        new=SimpleNamespace(max_epochs=max_epochs, estimated_stepping_batches=steps),
    )


# ----------------------------------------------------------------------------- discovery
def test_menus_and_files_agree() -> None:
    """Every architecture model.arch accepts has its conf/model file (and no file names another),
    and every loss WeightedLoss knows has a conf/loss file using it alone."""
    assert set(of("model")) == set(ARCHS)
    assert {option_yaml("model", o)["arch"] for o in of("model")} == set(ARCHS)
    assert set(LOSSES) <= set(of("loss"))
    for name in LOSSES:
        assert set(option_yaml("loss", name)) == {name}


def test_every_option_file_says_what_it_is() -> None:
    for group, option in OPTIONS:
        lines = (CONF / group / f"{option}.yaml").read_text().splitlines()
        comments = [line for line in lines if line.startswith("# ") and "@package" not in line]
        assert comments, f"conf/{group}/{option}.yaml: add a comment line saying what it is"


def test_every_group_has_options() -> None:
    assert {"model", "encoder", "loss", "optimizer", "scheduler", "data"} <= set(GROUPS)
    for group in GROUPS:
        assert of(group), f"conf/{group}/ has no options"


def test_every_group_has_a_check() -> None:
    checked = {"model", "encoder", "loss", "optimizer", "scheduler", "trainer", "callbacks"}
    checked |= {"logger", "data", "experiment", "paths", "hydra", "hparams_search"}
    assert set(GROUPS) <= checked, f"add a test for {sorted(set(GROUPS) - checked)}"


# ----------------------------------------------------------------------------- model section
@pytest.mark.parametrize("option", of("model"))
def test_model_option_instantiates(option: str, compose) -> None:
    cfg = compose(f"model={option}", *TINY_MODEL)
    # config keys are the module's argument names (grep finds both sides)
    args = set(inspect.signature(SteelSegModule.__init__).parameters) - {"self"}
    assert set(cfg.model) - {"_target_", "_convert_"} == args
    module = instantiate(cfg.model)
    assert isinstance(module, SteelSegModule)
    assert module.hparams.arch == option_yaml("model", option)["arch"]
    x = tiny_input(arch=option)
    with torch.no_grad():
        assert module.eval()(x).shape == x.shape


@pytest.mark.parametrize("option", of("encoder"))
def test_encoder_option_instantiates(option: str, compose, hub_offline) -> None:
    cfg = compose(f"encoder={option}", "model.encoder_weights=null")
    spec = option_yaml("encoder", option)
    assert cfg.model.encoder_name == spec["encoder_name"]
    module = instantiate(cfg.model)  # the default FPN on 3 channels, as trained
    assert module.hparams.encoder_name == spec["encoder_name"]
    assert module.hparams.encoder_weights is None
    with torch.no_grad():
        assert module.eval()(tiny_input()).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("option", of("loss"))
def test_loss_option_instantiates(option: str, compose, reuse_net) -> None:
    cfg = compose(f"loss={option}", *TINY_MODEL, *SLIM_FPN)
    spec = option_yaml("loss", option)
    assert OmegaConf.to_container(cfg.model.loss) == spec  # replaces the default, no merge
    module = instantiate(cfg.model)
    # _convert_: all -> checkpoints hold plain dicts, loadable with no OmegaConf or Hydra
    assert plain(dict(module.hparams)), dict(module.hparams)
    assert isinstance(module.loss_fn, WeightedLoss)
    assert set(module.loss_fn.weights) == set(spec)
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 8:20, 8:20] = 1
    logits = torch.where(target > 0, 3.0, -3.0)
    good, bad = module.loss_fn(logits, target), module.loss_fn(-logits, target)
    assert good.ndim == 0 and torch.isfinite(good)
    assert good < bad


@pytest.mark.parametrize("option", of("optimizer"))
def test_optimizer_option_instantiates(option: str, compose, reuse_net) -> None:
    cfg = compose(f"optimizer={option}", "scheduler=none", *TINY_MODEL, *SLIM_FPN)
    spec = option_yaml("optimizer", option)
    module = instantiate(cfg.model)
    assert module.hparams.optimizer == spec
    assert module.lr == spec["lr"]
    with fake_trainer():
        opt = module.configure_optimizers()
    assert type(opt) is OPTIMIZERS[spec["name"]]
    for key, value in spec.items():
        if key != "name":
            assert opt.defaults[key] == value, key


@pytest.mark.parametrize("option", of("scheduler"))
def test_scheduler_option_instantiates(option: str, compose, reuse_net) -> None:
    cfg = compose(f"scheduler={option}", *TINY_MODEL, *SLIM_FPN)
    spec = option_yaml("scheduler", option)
    module = instantiate(cfg.model)
    assert module.hparams.scheduler == spec
    with fake_trainer(max_epochs=3, steps=30):
        out = module.configure_optimizers()
    if spec["name"] == "none":
        assert isinstance(out, torch.optim.Optimizer)
        return
    sched = out["lr_scheduler"]
    sched = sched["scheduler"] if isinstance(sched, dict) else sched
    assert type(sched) is SCHEDULER_CLASSES[spec["name"]]
    if isinstance(out["lr_scheduler"], dict) and "monitor" in out["lr_scheduler"]:
        assert out["lr_scheduler"]["monitor"] in LOGGED


# ----------------------------------------------------------------------------- trainer & co
@pytest.mark.parametrize("option", of("trainer"))
def test_trainer_option_instantiates(option: str, compose, tmp_path: Path) -> None:
    cfg = compose(f"trainer={option}")
    args = set(inspect.signature(pl.Trainer.__init__).parameters)
    assert set(cfg.trainer) - {"_target_"} <= args
    extra = {}
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        extra["accelerator"] = "cpu"  # the rest of the option must still instantiate
    trainer = instantiate(cfg.trainer, logger=False, **extra)
    assert isinstance(trainer, pl.Trainer)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert Path(trainer.default_root_dir) == tmp_path / "run"


@pytest.mark.parametrize("option", of("callbacks"))
def test_callbacks_option_instantiates(option: str, compose) -> None:
    cfg = compose(f"callbacks={option}")
    entries = {k: v for k, v in cfg.callbacks.items() if v is not None}
    assert entries
    for name, entry in entries.items():
        cb = instantiate(entry)
        assert isinstance(cb, pl.Callback), name
        monitor = getattr(cb, "monitor", None)
        if monitor is not None:
            assert monitor in LOGGED, f"{name} monitors {monitor}, never logged"
    assert "model_checkpoint" in entries  # every option keeps the best/last checkpoints


@pytest.mark.parametrize("option", of("logger"))
def test_logger_option_instantiates(option: str, compose, tmp_path: Path) -> None:
    cfg = compose(f"logger={option}")
    entries = {k: v for k, v in cfg.logger.items() if v is not None}
    assert entries
    for name, entry in entries.items():
        logger = instantiate(entry)
        assert isinstance(logger, pl.loggers.Logger), name
        assert Path(logger.save_dir) == tmp_path / "run"


@pytest.mark.parametrize("option", of("data"))
def test_data_option_instantiates_without_touching_disk(
    option: str, compose, tmp_path: Path
) -> None:
    cfg = compose(f"data={option}")
    args = set(inspect.signature(SteelDataModule.__init__).parameters) - {"self"}
    assert set(cfg.data) - {"_target_"} == args
    before = sorted(tmp_path.rglob("*"))
    dm = instantiate(cfg.data)
    assert isinstance(dm, SteelDataModule)
    assert sorted(tmp_path.rglob("*")) == before  # no folder, no generated data, no split
    assert dm.root.parent == tmp_path / "data"
    assert dm.prepared_dir.parent == dm.root / "prepared"
    # resized to height x width, or native resolution with training crops (data=folder)
    assert dm.size == (None if cfg.data.crop else (cfg.data.height, cfg.data.width))
    assert dm.crop == (None if cfg.data.crop is None else parse_crop(cfg.data.crop))
    if option == "severstal":
        assert dm.synthetic is None  # never generate into a real data folder


# ----------------------------------------------------------------------------- experiments
def check_quickstart(cfg: DictConfig) -> None:
    assert cfg.model.encoder_weights is None  # runs offline: the README's first command
    assert cfg.model.encoder_name == option_yaml("encoder", "mobilenetv3_small")["encoder_name"]
    assert cfg.model.scheduler.name == "onecycle"
    assert cfg.data.synthetic.n_images == 400
    assert cfg.data.crop == "256x416" and cfg.model.input_size is None  # native resolution
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.model.arch_kwargs == {  # the slim FPN decoder (smp's: 256, 128)
        "decoder_pyramid_channels": 64,
        "decoder_segmentation_channels": 32,
    }


def check_reference_baseline(cfg: DictConfig) -> None:
    assert (cfg.model.arch, cfg.model.encoder_name) == ("fpn", "resnext50_32x4d")
    assert cfg.model.encoder_weights == "imagenet"
    assert cfg.model.loss == {"dice": 1.0}
    assert (cfg.model.optimizer.name, cfg.model.optimizer.lr) == ("adamw", 1e-4)
    assert (cfg.model.scheduler.T_0, cfg.model.scheduler.T_mult) == (10, 2)
    assert "swa" in cfg.callbacks
    assert cfg.callbacks.swa.swa_lrs == 1e-4  # the optimizer's lr
    assert cfg.test_ckpt == "current"  # SWA: test the averaged weights
    assert (cfg.data.height, cfg.data.width, cfg.data.batch_size) == (256, 416, 8)
    assert cfg.data.crop is None and list(cfg.model.input_size) == [256, 416]  # the squash
    assert (cfg.model.classes, cfg.model.gate) == (1, False)  # binary, as the reference
    assert cfg.data.synthetic is None
    assert cfg.data.split_file == "reference"
    assert cfg.trainer.max_epochs == 30


EXPERIMENT_VALUES = {
    "quickstart": check_quickstart,
    "reference_baseline": check_reference_baseline,
    "seed_baseline": check_reference_baseline,  # the deprecated name of reference_baseline
}


@pytest.mark.parametrize("option", of("experiment"))
def test_experiment_option_instantiates(option: str, compose, tmp_path: Path, hub_offline) -> None:
    cfg = compose(f"experiment={option}")
    EXPERIMENT_VALUES.get(option, lambda cfg: None)(cfg)  # the values the README reports
    cfg.model.encoder_weights = None  # no downloads here
    module = instantiate(cfg.model)
    assert isinstance(module, SteelSegModule)
    assert module.lr == cfg.model.optimizer.lr
    dm = instantiate(cfg.data)
    assert isinstance(dm, SteelDataModule)
    assert not (tmp_path / "data").exists()
    trainer = instantiate(cfg.trainer, logger=False, accelerator="cpu")
    assert trainer.max_epochs == cfg.trainer.max_epochs
    for name, entry in cfg.callbacks.items():
        if entry is not None:
            assert isinstance(instantiate(entry), pl.Callback), name


@pytest.mark.parametrize("model", of("model"))
@pytest.mark.parametrize("experiment", of("experiment"))
def test_every_experiment_builds_with_every_model(
    experiment: str, model: str, compose, hub_offline
) -> None:
    """experiment=X model=Y composes and builds for every pair: an experiment's arch_kwargs must
    suit whichever architecture is chosen (the tiny encoder changes no decoder setting)."""
    cfg = compose(f"experiment={experiment}", f"model={model}", *TINY_MODEL[:2])
    assert cfg.model.arch == option_yaml("model", model)["arch"]
    if cfg.model.arch_kwargs == own_arch_kwargs(model):
        return  # the model option's own settings: built by test_model_option_instantiates
    module = instantiate(cfg.model)
    x = tiny_input(1, 64, 320, arch=model)  # grey in, whatever the network's in_channels
    with torch.no_grad():
        assert module.eval()(x).shape == x.shape


def test_old_reference_names_still_work(compose) -> None:
    """experiment=seed_baseline and data.split_file=seed: deprecated names of the reference ones."""
    old, new = compose("experiment=seed_baseline"), compose("experiment=reference_baseline")
    assert OmegaConf.to_container(old) == OmegaConf.to_container(new)
    assert resolve_split_file("seed") == resolve_split_file("reference")
    assert resolve_split_file("reference").is_file()
    assert resolve_split_file("reference").name == "reference_split.csv"


def test_swa_lr_follows_the_optimizer(compose) -> None:
    assert compose("callbacks=swa").callbacks.swa.swa_lrs == 1e-4
    assert compose("callbacks=swa", "optimizer=sgd").callbacks.swa.swa_lrs == 1e-2


def test_unknown_arch_kwargs_is_one_value_error_naming_the_key() -> None:
    with pytest.raises(ValueError) as e:  # FPN's decoder setting given to a Unet
        build_network("unet", "tu-mobilenetv3_small_100", None, 1, {"decoder_pyramid_channels": 8})
    message = str(e.value)
    assert "\n" not in message
    assert "decoder_pyramid_channels" in message and "unet" in message.lower()
    assert "decoder_channels" in message  # what Unet does take
    with pytest.raises(ValueError, match="classes"):  # build_network's own: one class of logits
        build_network("fpn", "tu-mobilenetv3_small_100", None, 1, {"classes": 2})


# ----------------------------------------------------------------------------- paths, hydra
@pytest.mark.parametrize("option", of("paths"))
def test_paths_option_composes(option: str, compose, tmp_path: Path) -> None:
    cfg = compose(f"paths={option}")
    assert set(cfg.paths) == set(option_yaml("paths", option))
    assert cfg.paths.output_dir == str(tmp_path / "run")  # compose's output_dir wins
    assert cfg.paths.data_dir == str(tmp_path / "data")
    assert cfg.data.root.startswith(str(tmp_path / "data"))  # data follows paths.data_dir


@pytest.mark.parametrize("option", of("hydra"))
def test_hydra_option_composes(option: str) -> None:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"hydra={option}"], return_hydra_config=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    assert run_dir.startswith("outputs/${task_name}/")
    assert cfg.hydra.job.chdir is False


@pytest.mark.parametrize("option", of("hparams_search"))
def test_hparams_search_option_composes(option: str) -> None:
    """A search is a multirun whose every parameter is a config group or an existing key, and
    whose objective is a metric the module logs (tests/test_sweep.py runs one)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra_compose(
            "train", overrides=[f"hparams_search={option}"], return_hydra_config=True
        )
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.optimized_metric in LOGGED
    for key in cfg.hydra.sweeper.params:
        assert key in GROUPS or OmegaConf.select(cfg, key) is not None, key


# ----------------------------------------------------------------------------- unknown options
@pytest.mark.parametrize(("group", "bad"), [("model", "foo"), ("encoder", "bar"), ("loss", "baz")])
def test_unknown_option_lists_the_available_ones(group: str, bad: str, compose) -> None:
    with pytest.raises(ConfigCompositionException, match="Available options") as e:
        compose(f"{group}={bad}")
    for option in of(group):
        assert option in str(e.value)
