"""Linear dense-forecasting heads on frozen VFM patch features, and their checkpoint file.

Every head is BatchNorm + a 1x1 convolution on the (D, h, w) patch grid, as in the paper's
protocol: they measure what the features (true, reconstructed or predicted) linearly encode.
The segmentation and depth heads are scored; the RGB head only renders features as pixels.
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


class RGBHead(nn.Module):
    """(B, D, h, w) features -> (B, 3, h*p, w*p) pixels in [0, 1] (unclamped): each patch's feature
    maps linearly to its own p x p x 3 values, as the reference's visualisation head does."""

    def __init__(self, *, in_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.bn = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, 3 * patch_size * patch_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(self.bn(x))  # (B, 3*p*p, h, w)
        return rearrange(out, "b (c p q) h w -> b c (h p) (w q)", c=3, p=self.patch_size)


RGB_SEED = 0  # the RGB head's initial weights come from their own generator: the other heads' draws stay as they were


def build_heads(
    *,
    in_dim: int,
    num_classes: int | None,
    depth_range: tuple[float, float] | None,
    num_bins: int = 256,
    rgb_patch: int | None = None,
) -> nn.ModuleDict:
    """The heads a dataset supports: "segmentation" if it has classes, "depth" if it has a range,
    and "rgb" (pixels of `rgb_patch`-sized patches) if asked. The RGB head is built last from its
    own seeded generator, so the others are initialised exactly as without it."""
    heads = nn.ModuleDict()
    if num_classes:
        heads["segmentation"] = SegHead(in_dim=in_dim, num_classes=num_classes)
    if depth_range:
        heads["depth"] = DepthHead(in_dim=in_dim, min_depth=depth_range[0], max_depth=depth_range[1], num_bins=num_bins)
    if not heads:
        raise ValueError("the dataset has neither segmentation classes nor a depth range: no head to build")
    if rgb_patch:
        with torch.random.fork_rng(devices=[]):  # the global generator is left untouched
            torch.manual_seed(RGB_SEED)
            heads["rgb"] = RGBHead(in_dim=in_dim, patch_size=rgb_patch)
    return heads


def heads_config(heads: nn.ModuleDict) -> dict:
    """Everything `build_heads` needs to rebuild `heads` (stored in the checkpoint)."""
    seg, depth, rgb = (heads[task] if task in heads else None for task in ("segmentation", "depth", "rgb"))
    some = seg or depth
    return {
        "in_dim": some.bn.num_features,
        "num_classes": seg.conv.out_channels if seg else None,
        "depth_range": [depth.min_depth, depth.max_depth] if depth else None,
        "num_bins": depth.conv.out_channels if depth else 256,
        "rgb_patch": rgb.patch_size if rgb else None,
    }


def apply_head(head: nn.Module, feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch features (..., N, D) on an (h, w) grid -> the head's output on that grid,
    (..., classes, h, w) for segmentation, (..., h, w) for depth, (..., 3, h*p, w*p) for rgb."""
    lead = feats.shape[:-2]
    x = rearrange(feats.reshape(-1, *feats.shape[-2:]), "b (h w) d -> b d h w", h=grid[0], w=grid[1])
    out = head(x)
    return out.reshape(*lead, *out.shape[1:])


def rgb_images(head: RGBHead, feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch features (..., N, D) on an (h, w) grid -> images (..., h*p, w*p, 3) in [0, 1] on the CPU."""
    return apply_head(head, feats, grid).float().clamp(0, 1).movedim(-3, -1).cpu()


def save_heads(heads: nn.ModuleDict, path: str | os.PathLike, metadata: dict) -> Path:
    """Atomic safetensors file with keys `<task>.bn.*`, `<task>.conv.*` (task: segmentation, depth,
    rgb) and the heads config
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
