"""Losses on logits, built from a plain spec: ``{name: weight}`` or ``{name: {weight, **kwargs}}``.

Examples:
    ``{"dice": 1.0}`` (the reference recipe), ``{"bce": 0.5, "dice": 0.5}``,
    ``{"tversky": {"weight": 1.0, "alpha": 0.3, "beta": 0.7}}``.

Every loss takes logits ``(N, C, H, W)`` and targets ``(N, C, H, W)`` in {0, 1}: C = 1 (binary)
or one sigmoid channel per class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

BINARY, MULTILABEL = smp.losses.BINARY_MODE, smp.losses.MULTILABEL_MODE

#: name -> factory(mode, **kwargs) of a loss module taking (logits, target). ``mode`` is smp's
#: binary mode (one channel) or multilabel mode (a sigmoid channel per class: region losses
#: are computed per class, then averaged).
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice": lambda mode, **kw: smp.losses.DiceLoss(mode, from_logits=True, **kw),
    "bce": lambda mode, **kw: smp.losses.SoftBCEWithLogitsLoss(**kw),
    "focal": lambda mode, **kw: smp.losses.FocalLoss(mode, **kw),
    "lovasz": lambda mode, **kw: smp.losses.LovaszLoss(mode, from_logits=True, **kw),
    "tversky": lambda mode, **kw: smp.losses.TverskyLoss(mode, from_logits=True, **kw),
    "jaccard": lambda mode, **kw: smp.losses.JaccardLoss(mode, from_logits=True, **kw),
}


class WeightedLoss(nn.Module):
    """Weighted sum of named losses; ``forward`` returns the total.

    Args:
        spec: ``{name: weight}`` or ``{name: {"weight": w, **loss_kwargs}}``; names from
            :data:`LOSSES`.
        classes: Output channels: 1 (binary) or one per class (multilabel).
    """

    def __init__(self, spec: Mapping[str, Any], classes: int = 1) -> None:
        super().__init__()
        if not spec:
            raise ValueError(f"loss spec is empty; give at least one of {sorted(LOSSES)}")
        self.weights: dict[str, float] = {}
        terms = {}
        for name, value in spec.items():
            if name not in LOSSES:
                raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
            kwargs = dict(value) if isinstance(value, Mapping) else {"weight": value}
            self.weights[name] = float(kwargs.pop("weight", 1.0))
            terms[name] = LOSSES[name](BINARY if classes == 1 else MULTILABEL, **kwargs)
        self.terms = nn.ModuleDict(terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * self.terms[n](logits, target) for n, w in self.weights.items())
