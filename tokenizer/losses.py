"""Feature-space regression losses, elementwise (reduce at the call site)."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

FeatureLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def log_cosh(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # log(cosh(d)) = |d| + softplus(-2|d|) - log 2, stable for large |d|
    diff = (pred - target).abs()
    return diff + F.softplus(-2.0 * diff) - math.log(2.0)


def feature_loss(name: str, *, beta: float = 0.1) -> FeatureLoss:
    """Elementwise loss by name: `log_cosh` (DeltaTok default), `mse`, `smooth_l1` (with beta)."""
    losses: dict[str, FeatureLoss] = {
        "log_cosh": log_cosh,
        "mse": lambda p, t: F.mse_loss(p, t, reduction="none"),
        "smooth_l1": lambda p, t: F.smooth_l1_loss(p, t, reduction="none", beta=beta),
    }
    if name not in losses:
        raise ValueError(f"unknown loss '{name}'; choose one of {sorted(losses)}")
    return losses[name]
