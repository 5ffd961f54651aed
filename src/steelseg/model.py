"""SteelSegModule: an smp segmentation network as a LightningModule built from plain values.

The module takes strings, numbers and small dicts (architecture, encoder, weights, loss,
optimizer and scheduler specs) and builds everything itself, so ``save_hyperparameters()``
stores a complete recipe and ``SteelSegModule.load_from_checkpoint(path)`` needs no Hydra.

Input: ``uint8`` (or float 0..255) grey images ``(N, 1, H, W)`` of any size (padded to the
network's stride inside); the module normalises them on its device as the encoder expects.
Output: logits ``(N, C, H, W)`` (no activation), C = ``classes``; with the image-level gate
head (``gate=True``) a pair ``(mask logits (N, C, H, W), image logits (N, C))``.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from torch import nn

from steelseg import checkpoint as ckpt_io
from steelseg.losses import WeightedLoss
from steelseg.runtime import STRIDE
from steelseg.segmetrics import SegMetrics

#: config name -> smp architecture name
ARCHS: dict[str, str] = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "linknet": "Linknet",
    "pspnet": "PSPNet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}

SCHEDULERS = ("none", "cosine", "cosine_warm_restarts", "onecycle", "plateau")

#: ``model.compile`` values: False (eager), True (torch.compile's default mode) or a mode name.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # modes that replay CUDA graphs

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GATE_DROPOUT = 0.2  # before the gate head's linear layer (smp's aux_params), against overfitting
HUB_HOST = "huggingface.co"  # where smp and timm fetch pretrained encoder weights


def _choice(kind: str, name: str, valid) -> str:
    key = str(name).lower()
    if key not in valid:
        raise ValueError(f"unknown {kind} {name!r}; choose from {sorted(valid)}")
    return key


def check_encoder(name: str) -> None:
    """Raise ``ValueError`` listing smp's encoders when ``name`` is not one of them."""
    from segmentation_models_pytorch.encoders import get_encoder_names

    if name.startswith("tu-"):  # any timm model
        import timm

        if not timm.is_model(name[3:]):
            raise ValueError(f"unknown timm encoder {name!r}; see timm.list_models() for names")
        return
    names = get_encoder_names()
    if name not in names:
        raise ValueError(
            f"unknown encoder {name!r}; smp has {sorted(names)} and any timm model as 'tu-<name>'"
        )


def _hub_reachable(timeout: float = 5.0) -> bool:
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def build_network(
    arch: str,
    encoder_name: str,
    encoder_weights: str | None,
    in_channels: int,
    arch_kwargs: Mapping[str, Any] | None = None,
    classes: int = 1,
    gate: bool = False,
) -> nn.Module:
    """Create the smp network: ``classes`` output channels of logits, and with ``gate`` an
    image-level classification head on the encoder (smp's ``aux_params``) giving one logit
    per class.

    Args:
        arch: A key of :data:`ARCHS` (case-insensitive).
        encoder_name: An smp encoder, or ``tu-<timm model>``.
        encoder_weights: ``"imagenet"`` (or another smp weight name), None for random
            initialisation, or the path of a local file holding the encoder's state dict.
        in_channels: 1 (grey) or 3 (grey repeated, as ImageNet encoders expect).
        arch_kwargs: Extra arguments of the smp architecture (e.g. decoder sizes): keywords of
            its class's ``__init__`` other than those set here (encoder, weights, channels,
            classes) and those that would change the output (``activation``, ``aux_params``).

    Raises:
        ValueError: unknown architecture, encoder or ``arch_kwargs`` key (smp would pass an
            unknown key on to the encoder, which fails with a TypeError deep inside).
        ConnectionError: pretrained weights are requested but cannot be downloaded.
    """
    smp_arch = ARCHS[_choice("architecture", arch, ARCHS)]
    arch_kwargs = dict(arch_kwargs or {})
    params = inspect.signature(getattr(smp, smp_arch).__init__).parameters
    own = {"self", "encoder_name", "encoder_weights", "in_channels", "classes"}
    own |= {"activation", "aux_params"}  # the module needs one tensor of logits
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes = sorted(k for k, p in params.items() if p.kind in named and k not in own)  # not **kwargs
    unknown = sorted(set(arch_kwargs) - set(takes))
    if unknown:
        raise ValueError(
            f"model.arch_kwargs {unknown} not accepted by architecture {arch!r} (smp.{smp_arch}); "
            f"it takes {takes}"
        )
    check_encoder(encoder_name)
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    local = encoder_weights is not None and (
        os.sep in str(encoder_weights) or Path(str(encoder_weights)).suffix != ""
    )
    if local and not Path(encoder_weights).is_file():
        raise FileNotFoundError(f"encoder_weights file {encoder_weights} does not exist")
    named = encoder_weights is not None and not local
    if named and os.environ.get("HF_HUB_OFFLINE") != "1" and not _hub_reachable():
        raise ConnectionError(  # an OSError: steelseg-train shows it as one line, exit 2
            f"encoder_weights={encoder_weights!r} must be downloaded from {HUB_HOST}, which this "
            "machine cannot reach. Use model.encoder_weights=null (random initialisation), or "
            "model.encoder_weights=/path/to/encoder.pth (a saved encoder state dict), or set "
            "HF_HUB_OFFLINE=1 if the weights are already in the Hugging Face cache."
        )
    net = smp.create_model(
        smp_arch,
        encoder_name=encoder_name,
        encoder_weights=encoder_weights if named else None,
        in_channels=in_channels,
        classes=classes,
        aux_params={"classes": classes, "dropout": GATE_DROPOUT} if gate else None,
        **arch_kwargs,
    )
    if local:
        state = torch.load(encoder_weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        own = net.encoder.state_dict()
        shared = [k for k in state if k in own]
        if not shared:
            raise ValueError(
                f"{encoder_weights} holds no weights of encoder {encoder_name} "
                f"(its keys: {list(state)[:5]}, the encoder's: {list(own)[:5]})"
            )
        net.encoder.load_state_dict({k: state[k] for k in shared}, strict=False)
    return net


#: smp encoders whose pretrained weights expect other statistics than ImageNet's. Kept here
#: because smp 0.6 reads them from the Hugging Face hub, which may be unreachable.
OTHER_STATS = {
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "xception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dpn": ((124 / 255, 117 / 255, 104 / 255), (1 / (0.0167 * 255),) * 3),
}


def normalisation(encoder_name: str, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (shape (C, 1, 1), for pixel values scaled to 0..1) the encoder expects.

    Looked up offline: timm's pretrained config for ``tu-`` encoders, else ImageNet's
    statistics (what nearly every smp encoder was trained with) or :data:`OTHER_STATS`.
    """
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if encoder_name.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder_name[3:])
        if cfg is not None:
            mean, std = cfg.mean, cfg.std
    else:
        for prefix, stats in OTHER_STATS.items():
            if encoder_name.startswith(prefix):
                mean, std = stats
    mean, std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    if in_channels == 1:  # grey input to a 1-channel stem: the average of the channels
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    return mean.view(-1, 1, 1), std.view(-1, 1, 1)


def normalise(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Grey pixel values -> the encoder's normalised input (also inside exported models).

    Shape:
        image: (N, 1, H, W) uint8 or float in 0..255; mean, std: (C, 1, 1) in pixel units,
        C = 1 or 3. Returns float32 (N, C, H, W): grey repeated to the 3 equal channels an
        ImageNet encoder expects when C = 3.
    """
    return (image.float().expand(-1, mean.shape[0], -1, -1) - mean) / std


def compile_mode(value: bool | str | None) -> str | None:
    """``model.compile`` -> a ``torch.compile`` mode, or None for eager.

    Raises:
        ValueError: not a bool or one of :data:`COMPILE_MODES`.
    """
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ValueError(f"model.compile={value!r} must be false, true or one of {list(COMPILE_MODES)}")


class SteelSegModule(pl.LightningModule):
    """Binary defect segmentation with an smp network.

    Args:
        arch: Architecture, a key of :data:`ARCHS` (e.g. ``fpn``, ``unet``).
        encoder_name: smp encoder (e.g. ``resnext50_32x4d``, ``efficientnet-b3``).
        encoder_weights: ``imagenet``, None, or a local encoder state-dict file.
        in_channels: 1 or 3; grey images are repeated to 3 channels for 3.
        arch_kwargs: Extra smp architecture arguments.
        loss: Loss spec, see :mod:`steelseg.losses`.
        optimizer: ``{"name": "adamw", "lr": 1e-4, **kwargs}``; names from :data:`OPTIMIZERS`.
        scheduler: ``{"name": ..., **kwargs}`` with a name from :data:`SCHEDULERS`, or None.
        threshold: Probability threshold of the metrics.
        input_size: ``(height, width)`` the network was trained at; stored with the weights so
            inference resizes full-size images to it (None: native resolution: images go in at
            their own size, padded to the stride; what ``data.crop`` training gives).
        classes: Output channels: 1 (every defect class merged) or one sigmoid channel per
            class (4 for Severstal).
        gate: Add the image-level gate head (smp ``aux_params``): a logit per class that the
            image shows that class, trained jointly with the masks (BCE); ``steelseg-tune``
            chooses how it gates the masks.
        gate_weight: Weight of the gate head's BCE loss next to the mask loss.
        compile: ``torch.compile`` the network when fitting: False, True (default mode) or a
            mode of :data:`COMPILE_MODES`. Inference from a checkpoint stays eager.
        channels_last: Run the network in channels_last memory format (faster convolutions on
            tensor-core GPUs); None: on a CUDA device only.
        init_from: A steelseg checkpoint to fine-tune from (transfer learning without ImageNet
            weights). Only the path is stored, so this run's own checkpoints load without that
            file: :func:`steelseg.train.train` copies its weights in before fitting (not when
            resuming) with :meth:`init_weights_from`.
    """

    def __init__(
        self,
        arch: str = "fpn",
        encoder_name: str = "resnext50_32x4d",
        encoder_weights: str | None = "imagenet",
        in_channels: int = 3,
        arch_kwargs: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        threshold: float = 0.5,
        input_size: tuple[int, int] | list[int] | None = None,
        compile: bool | str = False,
        channels_last: bool | None = None,
        classes: int = 1,
        gate: bool = False,
        gate_weight: float = 0.5,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        compile_mode(compile)  # fail at construction, not after the data is prepared
        loss = loss or {"dice": 1.0}
        optimizer = optimizer or {"name": "adamw", "lr": 1e-4}
        _choice("optimizer", optimizer.get("name", ""), OPTIMIZERS)
        if scheduler:
            _choice("scheduler", scheduler.get("name", ""), SCHEDULERS)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if input_size is not None and (
            len(input_size) != 2 or any(int(v) <= 0 or int(v) % STRIDE for v in input_size)
        ):
            raise ValueError(
                f"input_size must be (height, width), multiples of 32, got {input_size}"
            )
        if int(classes) < 1:
            raise ValueError(f"model.classes={classes} must be >= 1 (1: defect classes merged)")
        init_from = None if init_from is None else str(init_from)  # a checkpoint holds plain values
        self.save_hyperparameters()
        self.net = build_network(
            arch, encoder_name, encoder_weights, in_channels, arch_kwargs, int(classes), gate
        )
        mean, std = normalisation(encoder_name, in_channels)
        self.register_buffer("mean", mean * 255.0, persistent=False)  # pixel units, (C, 1, 1)
        self.register_buffer("std", std * 255.0, persistent=False)
        self.loss_fn = WeightedLoss(loss, int(classes))
        self.gate_loss = nn.BCEWithLogitsLoss()
        self.lr = float(optimizer.get("lr", 1e-3))  # an attribute, so Lightning's Tuner can set it
        self.val_metrics = SegMetrics(threshold, int(classes))
        self.test_metrics = SegMetrics(threshold, int(classes))

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> SteelSegModule:
        """Load a trained module: the one way steelseg turns a checkpoint into a network.

        Training resumes and every inference command read checkpoints through the same
        reader (:func:`steelseg.checkpoint.load`). Loading is weights-only (tensors and plain
        values: a file cannot run code while it loads). ``weights_only=False`` reads any
        pickle, which can run code hidden in the file: only for checkpoints you trust.
        Pretrained encoder weights are not fetched again: the checkpoint holds every weight.

        Args:
            checkpoint_path: A ``.ckpt`` written by ``steelseg-train`` (a URL goes to
                Lightning's own loader).
            map_location: Device for the weights (default CPU).
            weights_only: Refuse anything but tensors and plain values.
            **kwargs: Hyper-parameters that replace the stored ones.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is truncated, not a checkpoint, not steelseg's, needs unsafe
                loading, or holds weights that do not fit the network.
        """
        if "://" in str(checkpoint_path):
            return super().load_from_checkpoint(
                checkpoint_path, map_location=map_location, weights_only=weights_only, **kwargs
            )
        ckpt = ckpt_io.load(checkpoint_path, "cpu", weights_only)
        hp, state = ckpt_io.steelseg_parts(ckpt, checkpoint_path)
        hp = {**hp, "encoder_weights": None, **kwargs}
        try:
            module = cls(**hp)
        except TypeError as e:  # a hyper-parameter this version does not know
            raise ValueError(
                f"{checkpoint_path} does not match this steelseg version's model: {e}"
            ) from None
        ckpt_io.check_compatible(
            hp, module.hparams, state, module.state_dict(), f"checkpoint {checkpoint_path}"
        )
        module.load_state_dict(state)
        return module.to(map_location) if map_location is not None else module

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, in one line, a checkpoint whose weights do not fit this network."""
        trainer = self._trainer
        path = trainer.ckpt_path if trainer is not None else None
        ckpt_io.check_compatible(
            checkpoint.get("hyper_parameters", {}),
            self.hparams,
            checkpoint.get("state_dict", {}),
            self.state_dict(),
            where=f"checkpoint {path}" if path else "checkpoint",
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of each defect class (and with the gate head, of each class per image).

        Shape:
            image: (N, 1, H, W) uint8 or float in 0..255, any H, W (padded to a multiple of
            32 by reflection inside, cropped back). Returns (N, C, H, W) float32 logits (also
            under bf16/fp16 autocast); with ``gate``, ``(that, (N, C) image logits)``.
        """
        x = normalise(image, self.mean, self.std)
        h, w = x.shape[-2:]
        ph, pw = -h % STRIDE, -w % STRIDE
        if ph or pw:  # tiny cost; a no-op for Severstal's 256x1600 and every training size
            x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        if self.use_channels_last(x.device):
            x = x.contiguous(memory_format=torch.channels_last)
        if compile_mode(self.hparams.get("compile", False)) in CUDAGRAPH_MODES and x.is_cuda:
            # replayed CUDA graphs reuse their output buffers: tell torch a new step begins
            torch.compiler.cudagraph_mark_step_begin()
        out = self.net(x)
        masks, labels = out if isinstance(out, tuple) else (out, None)
        masks = masks[..., :h, :w].float()
        return masks if labels is None else (masks, labels.float())

    @staticmethod
    def split_outputs(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward``'s output -> (mask logits, image logits or None)."""
        return out if isinstance(out, tuple) else (out, None)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, mask logits) of a batch: the mask loss plus the weighted gate loss."""
        logits, image_logits = self.split_outputs(self(batch["image"]))
        loss = self.loss_fn(logits, batch["mask"])
        if image_logits is not None:
            loss = loss + self.hparams.get("gate_weight", 0.5) * self.gate_loss(
                image_logits, batch["label"]
            )
        return loss, logits

    def use_channels_last(self, device: torch.device | str) -> bool:
        """Whether the network runs channels_last on ``device`` (hparam, or None: on CUDA)."""
        flag = self.hparams.get("channels_last")
        return torch.device(device).type == "cuda" if flag is None else bool(flag)

    def configure_model(self) -> None:
        """Lightning hook, before the module moves to its device: the network's memory format."""
        trainer = self._trainer  # None inside load_from_checkpoint, which calls this hook too
        if trainer is not None and self.use_channels_last(trainer.strategy.root_device):
            self.net.to(memory_format=torch.channels_last)

    def init_weights_from(self, path: str | os.PathLike) -> str:
        """Copy a steelseg checkpoint's weights into this network, as smp's
        ``from_pretrained(classes=N, strict=False)`` does: every tensor whose name and shape
        match; the segmentation (and gate) head stays re-initialised when the class count (or
        the gate) differs. Read weights-only, through the reader ``load_from_checkpoint`` uses.

        Returns:
            The line to log, e.g. ``init_from a.ckpt: loaded 340 of 342 tensors;
            re-initialised: segmentation_head (classes 1 -> 3)``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a steelseg checkpoint, or one of another network (architecture,
                encoder, in_channels, arch_kwargs).
        """
        where = f"model.init_from={path}"
        try:
            ckpt = ckpt_io.load(path, "cpu")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{where} does not exist; pass a steelseg checkpoint file (a run's "
                "checkpoints/best-*.ckpt or last.ckpt) or model.init_from=null"
            ) from None
        hp, state = ckpt_io.steelseg_parts(ckpt, where)
        own = self.state_dict()
        fits, kept = ckpt_io.transferable(hp, self.hparams, state, own, where)
        self.load_state_dict(fits, strict=False)
        line = f"init_from {path}: loaded {len(fits)} of {len(own)} tensors"
        return line + (f"; re-initialised: {', '.join(kept)}" if kept else "")

    def on_fit_start(self) -> None:
        mode = compile_mode(self.hparams.get("compile", False))
        if mode is not None and not getattr(self, "_compiled", False):
            self.net.compile(mode=mode)  # in place: state_dict keys (checkpoints) are unchanged
            self._compiled = True

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["image"]),
        )
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str, metrics: SegMetrics) -> None:
        loss, logits = self._loss(batch)
        self.log(
            f"{stage}/loss",
            loss,
            on_epoch=True,
            prog_bar=stage == "val",
            batch_size=len(batch["image"]),
            sync_dist=True,
        )
        metrics.update(logits, batch["mask"])

    def _eval_epoch_end(self, stage: str, metrics: SegMetrics) -> None:
        values = metrics.compute()  # synchronised across processes by torchmetrics
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
        metrics.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metrics)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        spec = dict(self.hparams.optimizer)
        opt_cls = OPTIMIZERS[_choice("optimizer", spec.pop("name"), OPTIMIZERS)]
        spec.pop("lr", None)
        if opt_cls in (torch.optim.Adam, torch.optim.AdamW) and self.device.type == "cuda":
            spec.setdefault("fused", True)  # one kernel for all parameters, not a per-tensor loop
        optimizer = opt_cls(self.parameters(), lr=self.lr, **spec)
        sched = dict(self.hparams.scheduler or {"name": "none"})
        name = _choice("scheduler", sched.pop("name"), SCHEDULERS)
        if name == "none":
            return optimizer
        if name == "cosine":
            s = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=sched.pop("T_max", None) or self.trainer.max_epochs, **sched
            )
            return {"optimizer": optimizer, "lr_scheduler": s}
        if name == "cosine_warm_restarts":
            s = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, **sched)
            return {"optimizer": optimizer, "lr_scheduler": s}
        if name == "onecycle":
            s = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=sched.pop("max_lr", None) or self.lr,
                total_steps=self.trainer.estimated_stepping_batches,
                **sched,
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": s, "interval": "step"}}
        monitor = sched.pop("monitor", "val/iou")
        sched.setdefault("mode", "max")  # val/iou: higher is better
        s = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **sched)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": s, "monitor": monitor}}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
