"""Training the linear heads on frozen VFM features of labelled frames, and scoring them.

Segmentation: cross-entropy of the logits upsampled to label resolution (IGNORE_INDEX skipped).
Depth: L1 in metres on valid pixels of the predicted depth upsampled to label resolution.
RGB (a visualisation head): MSE on the frame's pixels in [0, 1], with its own optimizer and on
detached features, so the other heads (and a trained backbone) step exactly as without it.
Non-square frames go through the same two-crop split as the benchmark, so heads see what they
will be scored on.
"""

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from deltaworld.data.labelled import IGNORE_INDEX
from deltaworld.eval.forecast import crop_batch, head_maps, labelled_batches, score_heads
from deltaworld.eval.heads import apply_head
from deltaworld.eval.metrics import DenseMetrics, valid_depth
from deltaworld.eval.records import Record
from deltaworld.tokenizer.backbone import Backbone


def head_losses(
    heads: nn.ModuleDict, feats: torch.Tensor, grid: tuple[int, int], labels: dict, layout
) -> dict[str, torch.Tensor]:
    """Per-task training losses of heads on features (B, N, D) against label halves (B, h, w)."""
    losses = {}
    for task, target in labels.items():
        out = head_maps(heads[task], task, feats, grid, target.shape[-2:], layout)
        if task == "segmentation":
            losses[task] = F.cross_entropy(out, target, ignore_index=IGNORE_INDEX)
        else:
            pred, true = valid_depth(out, target)
            losses[task] = F.l1_loss(pred, true) if true.numel() else out.sum() * 0
    return losses


def rgb_loss(head: nn.Module, feats: torch.Tensor, grid: tuple[int, int], frames: torch.Tensor) -> torch.Tensor:
    """MSE of the RGB head on features (B, N, D) against their uint8 frames (B, 3, H, W), pixels in [0, 1]."""
    return F.mse_loss(apply_head(head, feats, grid).float(), frames.float() / 255)


def train_heads(
    *,
    backbone: Backbone,
    heads: nn.ModuleDict,
    dataset: Dataset,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    num_workers: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    train_backbone: bool = False,
) -> list[dict]:
    """Train `heads` in place on the last frame of each item; returns the mean losses per epoch.
    `train_backbone` trains the backbone's weights too (then frozen again): how the demo gives its
    random-init stand-in VFM the semantics a pretrained one has, before any heads are fitted."""
    heads.to(device).train()
    history = []
    what = "backbone+heads" if train_backbone else "heads"
    rgb = heads["rgb"] if "rgb" in heads else None
    scored = [p for task, head in heads.items() if task != "rgb" for p in head.parameters()]
    with backbone.unfrozen() if train_backbone else nullcontext([]) as backbone_params:
        optimizer = torch.optim.AdamW([*scored, *backbone_params], lr=lr, weight_decay=weight_decay)
        rgb_optimizer = None if rgb is None else torch.optim.AdamW(rgb.parameters(), lr=lr, weight_decay=weight_decay)
        for epoch in range(epochs):
            sums: dict[str, float] = {}
            steps = 0
            batches = labelled_batches(
                dataset, batch_size=batch_size, num_workers=num_workers, shuffle=True, seed=seed + epoch
            )
            bar = tqdm(
                batches,
                desc=f"{what} epoch {epoch + 1}/{epochs}",
                unit="batch",
                total=math.ceil(len(dataset) / batch_size),
            )
            for batch in bar:
                frames, _, labels, layout = crop_batch(batch, heads)
                with torch.set_grad_enabled(train_backbone):
                    feats = backbone.features(frames[:, -1:].to(device))[:, 0]  # (n*B, N, D)
                grid = backbone.grid(*frames.shape[-2:])
                losses = head_losses(heads, feats, grid, {k: v.to(device) for k, v in labels.items()}, layout)
                optimizer.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                optimizer.step()
                if rgb is not None:
                    losses["rgb"] = rgb_loss(rgb, feats.detach(), grid, frames[:, -1].to(device))
                    rgb_optimizer.zero_grad(set_to_none=True)
                    losses["rgb"].backward()
                    rgb_optimizer.step()
                for task, loss in losses.items():
                    sums[task] = sums.get(task, 0.0) + loss.item()
                steps += 1
                bar.set_postfix({task: f"{loss.item():.3f}" for task, loss in losses.items()})
            history.append({task: total / max(steps, 1) for task, total in sums.items()})
    heads.eval()
    return history


@torch.no_grad()
def evaluate_heads(
    *,
    backbone: Backbone,
    heads: nn.ModuleDict,
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> list[Record]:
    """miou / depth_rmse of the heads on the true features of each item's last (labelled) frame."""
    metrics = DenseMetrics(num_classes=getattr(dataset, "num_classes", None))
    heads.to(device).eval()
    batches = labelled_batches(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False, seed=0)
    for batch in tqdm(batches, desc="heads eval", unit="batch", total=math.ceil(len(dataset) / batch_size)):
        frames, _, labels, layout = crop_batch(batch, heads)
        feats = backbone(frames[:, -1:].to(device))[:, 0]
        grid = backbone.grid(*frames.shape[-2:])
        score_heads(metrics, heads, "heads", 0, feats, grid, {k: v.to(device) for k, v in labels.items()}, layout)
    return metrics.records(getattr(dataset, "name", "dataset"))
