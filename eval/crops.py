"""Non-square frames, as the reference protocol scores them: the frame is cut into two square crops
at its two ends (overlapping unless the aspect ratio is exactly 2; wider is refused), the models see each crop on its
own, and the label map is split at its middle, each half scored against the crop that covers it.
So every label pixel is scored exactly once, by a crop that saw it.

Crops are stacked along the batch: the first B items are the left (or top) crops, the next B the
right (or bottom) ones. A square frame is a single crop and passes through unchanged.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CropLayout:
    wide: bool | None  # None: square frames, nothing was cut
    overlap: bool = False  # the crops overlap (aspect below 2:1); at exactly 2:1 each crop is one half

    @property
    def num_crops(self) -> int:
        return 1 if self.wide is None else 2


def square_crops(frames: torch.Tensor) -> tuple[torch.Tensor, CropLayout]:
    """frames (B, ..., H, W) -> (crops (n*B, ..., S, S) with S = min(H, W), layout)."""
    h, w = frames.shape[-2:]
    if h == w:
        return frames, CropLayout(wide=None)
    wide, s = w > h, min(h, w)
    if max(h, w) > 2 * s:
        raise ValueError(
            f"frames of {h}x{w} are wider than 2:1: two square crops would leave the middle unseen "
            "(datasets cap the long side at twice the short one)"
        )
    first = frames[..., :s, :s]
    second = frames[..., :, w - s :] if wide else frames[..., h - s :, :]
    return torch.cat([first, second]), CropLayout(wide=wide, overlap=max(h, w) < 2 * s)


def repeat_for_crops(x: torch.Tensor, layout: CropLayout) -> torch.Tensor:
    """Per-clip values (B, ...) -> (n*B, ...) in the crops' batch order (timestamps, indices)."""
    return torch.cat([x] * layout.num_crops)


def split_labels(labels: torch.Tensor, layout: CropLayout, *, fill: float | int) -> torch.Tensor:
    """labels (B, h, w) -> (n*B, h, w') halves split at the middle of the long side. With an odd
    long side the first half is one pixel shorter and is padded with `fill` (ignore / invalid) at
    its far end, which is the second half's first pixel: still scored once."""
    if layout.wide is None:
        return labels
    dim = -1 if layout.wide else -2
    length = labels.shape[dim]
    mid = length // 2
    first, second = labels.narrow(dim, 0, mid), labels.narrow(dim, mid, length - mid)
    if first.shape != second.shape:
        pad = (0, 1, 0, 0) if layout.wide else (0, 0, 0, 1)
        first = F.pad(first, pad, value=fill)
    return torch.cat([first, second])


def crops_to_label_halves(pred: torch.Tensor, half_size: tuple[int, int], layout: CropLayout) -> torch.Tensor:
    """Predictions of the crops (n*B, C, h, w) -> (n*B, C, *half_size) on the label halves that
    `split_labels` made (for square frames: the whole label map), bilinear.

    At 2:1 each crop is exactly one half of the frame, so it is resized onto its label half whatever
    the label's own aspect (KITTI's labels are wider than its capped frames). Below 2:1 the label has
    the frame's aspect: a crop covers a square of the label map whose side is the halves' short side,
    the first crop's square starting where the label starts, the second one ending where it ends."""
    if layout.wide is None or not layout.overlap:
        return F.interpolate(pred, size=half_size, mode="bilinear", align_corners=False)
    side, length = (half_size[0], half_size[1]) if layout.wide else (half_size[1], half_size[0])
    up = F.interpolate(pred, size=(side, side), mode="bilinear", align_corners=False)
    b, dim = pred.shape[0] // 2, -1 if layout.wide else -2
    return torch.cat([up[:b].narrow(dim, 0, length), up[b:].narrow(dim, side - length, length)])
