"""Losses on logits, built from a plain spec: ``{name: weight}`` or ``{name: {weight, **kwargs}}``.

Examples:
    ``{"dice": 1.0}`` (the reference recipe), ``{"bce": 0.5, "dice": 0.5}``,
    ``{"tversky": {"weight": 1.0, "alpha": 0.3, "beta": 0.7}}``.

Every loss takes logits ``(N, 1, H, W)`` and targets ``(N, 1, H, W)`` in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

BINARY = smp.losses.BINARY_MODE

#: name -> factory(**kwargs) of a loss module taking (logits, target).
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice": lambda **kw: smp.losses.DiceLoss(BINARY, from_logits=True, **kw),
    "bce": lambda **kw: smp.losses.SoftBCEWithLogitsLoss(**kw),
    "focal": lambda **kw: smp.losses.FocalLoss(BINARY, **kw),
    "lovasz": lambda **kw: smp.losses.LovaszLoss(BINARY, from_logits=True, **kw),
    "tversky": lambda **kw: smp.losses.TverskyLoss(BINARY, from_logits=True, **kw),
    "jaccard": lambda **kw: smp.losses.JaccardLoss(BINARY, from_logits=True, **kw),
}


class WeightedLoss(nn.Module):
    """Weighted sum of named losses; ``forward`` returns the total.

    Args:
        spec: ``{name: weight}`` or ``{name: {"weight": w, **loss_kwargs}}``; names from
            :data:`LOSSES`.
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
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
            terms[name] = LOSSES[name](**kwargs)
        self.terms = nn.ModuleDict(terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * self.terms[n](logits, target) for n, w in self.weights.items())
