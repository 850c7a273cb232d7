"""Linear dense-forecasting heads on frozen VFM patch features, and their checkpoint file.

Both heads are BatchNorm + a 1x1 convolution on the (D, h, w) patch grid, as in the paper's
protocol: they measure what the features (true, reconstructed or predicted) linearly encode.
"""

import os
from pathlib import Path

import torch
import torch.nn as nn
from einops import rearrange

from deltaworld.tokenizer.checkpoint import export_safetensors, load_weights, read_metadata
from deltaworld.tokenizer.schema import Builder, checked_config, expect_kind, stamp


class SegHead(nn.Module):
    """(B, D, h, w) features -> (B, num_classes, h, w) logits."""

    def __init__(self, *, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class DepthHead(nn.Module):
    """(B, D, h, w) features -> (B, h, w) depth: the expectation of `num_bins` bin centres spaced
    linearly in [min_depth, max_depth], under weights relu(logits) + eps normalised to sum 1.
    The epsilon keeps every bin reachable, so an all-negative pixel still predicts a depth."""

    def __init__(
        self, *, in_dim: int, min_depth: float, max_depth: float, num_bins: int = 256, eps: float = 0.1
    ) -> None:
        super().__init__()
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.bn = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, num_bins, 1)
        self.min_depth, self.max_depth, self.eps = float(min_depth), float(max_depth), eps
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, num_bins), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.relu(self.conv(self.bn(x))) + self.eps  # (B, bins, h, w)
        weights = weights / weights.sum(1, keepdim=True)
        return torch.einsum("bkhw,k->bhw", weights, self.bins.to(weights.dtype))


def build_heads(
    *, in_dim: int, num_classes: int | None, depth_range: tuple[float, float] | None, num_bins: int = 256
) -> nn.ModuleDict:
    """The heads a dataset supports: "segmentation" if it has classes, "depth" if it has a range."""
    heads = nn.ModuleDict()
    if num_classes:
        heads["segmentation"] = SegHead(in_dim=in_dim, num_classes=num_classes)
    if depth_range:
        heads["depth"] = DepthHead(in_dim=in_dim, min_depth=depth_range[0], max_depth=depth_range[1], num_bins=num_bins)
    if not heads:
        raise ValueError("the dataset has neither segmentation classes nor a depth range: no head to build")
    return heads


def heads_config(heads: nn.ModuleDict) -> dict:
    """Everything `build_heads` needs to rebuild `heads` (stored in the checkpoint)."""
    seg, depth = (
        heads["segmentation"] if "segmentation" in heads else None,
        heads["depth"] if "depth" in heads else None,
    )
    some = seg or depth
    return {
        "in_dim": some.bn.num_features,
        "num_classes": seg.conv.out_channels if seg else None,
        "depth_range": [depth.min_depth, depth.max_depth] if depth else None,
        "num_bins": depth.conv.out_channels if depth else 256,
    }


def apply_head(head: nn.Module, feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch features (..., N, D) on an (h, w) grid -> the head's output on that grid,
    (..., classes, h, w) for segmentation, (..., h, w) for depth."""
    lead = feats.shape[:-2]
    x = rearrange(feats.reshape(-1, *feats.shape[-2:]), "b (h w) d -> b d h w", h=grid[0], w=grid[1])
    out = head(x)
    return out.reshape(*lead, *out.shape[1:])


def save_heads(heads: nn.ModuleDict, path: str | os.PathLike, metadata: dict) -> Path:
    """Atomic safetensors file with keys `<task>.bn.*`, `<task>.conv.*` and the heads config
    plus `metadata` (backbone config and weight digest, dataset, training figures)."""
    return export_safetensors(heads, path, stamp("heads", {"heads": heads_config(heads), **metadata}))


HEADS = Builder(build_heads)  # the builder of a heads file's `heads` field


def load_heads(path: str | os.PathLike) -> tuple[nn.ModuleDict, dict]:
    """(heads in eval mode, metadata) from a `save_heads` file, its config checked before anything is built."""
    meta = read_metadata(path)
    expect_kind(path, meta, ("heads",), "deltaworld heads data=<dataset> backbone_from=<export>")
    heads = HEADS.fn(**checked_config(path, meta, "heads", HEADS))
    heads.load_state_dict(load_weights(path))
    return heads.eval(), meta
