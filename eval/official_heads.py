"""The reference implementation's released task heads (models/task_heads.py: BatchNorm `bn.*` and a
1x1 convolution `head.*`, one file per dataset) -> this framework's heads (`<task>.bn.*`, `<task>.conv.*`)."""

from pathlib import Path

import torch
from torch import nn

from deltaworld.eval.heads import build_heads
from deltaworld.tokenizer.official import match_state_dict

# what the reference builds for each evaluation set (training/base.py, datasets/kitti.py)
REFERENCE_HEADS = {
    "vspw": {"num_classes": 124, "depth_range": None},
    "cityscapes": {"num_classes": 19, "depth_range": None},
    "kitti": {"num_classes": None, "depth_range": (1e-3, 80.0)},
}


def head_dataset(path: str | Path) -> str:
    """The evaluation set a released head file belongs to, from its path (the released repositories
    are named seg-head-vspw, seg-head-cityscapes, depth-head-kitti)."""
    found = [name for name in REFERENCE_HEADS if name in str(path).lower()]
    if len(found) != 1:
        raise ValueError(
            f"cannot tell which dataset the head file {path} belongs to; name it explicitly as "
            f"<dataset>:<file> with dataset one of {sorted(REFERENCE_HEADS)}"
        )
    return found[0]


def reference_name(key: str) -> str:
    """Our head's state-dict key as the reference names it: `conv.*` is its `head.*`, `bn.*` is shared."""
    return "head." + key.removeprefix("conv.") if key.startswith("conv.") else key


def heads_from_official(weights: dict[str, torch.Tensor], *, dataset: str, in_dim: int, source: str) -> nn.ModuleDict:
    """One released head of `dataset` as a heads ModuleDict ("segmentation" or "depth"), in eval mode."""
    if dataset not in REFERENCE_HEADS:
        raise ValueError(f"unknown reference head dataset '{dataset}'; known: {sorted(REFERENCE_HEADS)}")
    heads = build_heads(in_dim=in_dim, **REFERENCE_HEADS[dataset])
    (head,) = heads.values()
    ours = head.state_dict()
    # BatchNorm's step counter does nothing in eval mode: a file without it is still complete
    weights = {"bn.num_batches_tracked": torch.tensor(0), **weights}
    matched = match_state_dict(
        weights, {reference_name(k): v for k, v in ours.items()}, source=f"{source} (a reference {dataset} head)"
    )
    head.load_state_dict({k: matched[reference_name(k)] for k in ours})
    return heads.eval()
