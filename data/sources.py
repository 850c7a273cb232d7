"""Clip sources: each draws one training/eval clip from an rng.

A clip is {"frames": uint8 (T, 3, H, W), "timestamps": float32 (T,) seconds with t0 = 0, ...};
the synthetic source adds "segmentation" and "depth". Skipping bad inputs is the caller's job:
a source raises BadClipError naming the file and the reason.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from data.synthetic import render_clip, sample_gaps
from data.video import VideoDecodeError, VideoInfo, decode_frames, probe_video

__all__ = [
    "BadClipError",
    "ClipSource",
    "SyntheticSource",
    "VideoFolderSource",
    "resize_center_crop",
    "sample_gaps",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class BadClipError(RuntimeError):
    """An input cannot yield a clip; the message names the file and the reason."""


@runtime_checkable
class ClipSource(Protocol):
    def sample_clip(self, rng: np.random.Generator) -> dict[str, torch.Tensor]: ...


class SyntheticSource:
    """Labelled synthetic clips (see data.synthetic.render_clip)."""

    def __init__(
        self,
        *,
        num_frames: int = 8,
        height: int = 64,
        width: int = 64,
        num_classes: int = 4,
        num_shapes: int = 3,
        min_gap: float = 1 / 25,
        max_gap: float = 1 / 3,
    ) -> None:
        self.kwargs = dict(
            num_frames=num_frames,
            height=height,
            width=width,
            num_classes=num_classes,
            num_shapes=num_shapes,
            min_gap=min_gap,
            max_gap=max_gap,
        )

    def sample_clip(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return render_clip(rng, **self.kwargs)


def resize_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> uint8 (T, 3, height, width): scale so the frame covers the target,
    keep the centre, antialiased bilinear. Aspect ratio is kept, so nothing is squashed."""
    H, W = frames.shape[-2:]
    if (H, W) == (height, width):
        return frames
    scale = max(height / H, width / W)
    # crop in source pixels first: one resize, and only of what is kept
    ch, cw = min(H, round(height / scale)), min(W, round(width / scale))
    top, left = (H - ch) // 2, (W - cw) // 2
    crop = frames[:, :, top : top + ch, left : left + cw].float()
    out = F.interpolate(
        crop, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    return out.round().clamp(0, 255).to(torch.uint8)


class VideoFolderSource:
    """Clips from the video files under `root` (recursively), at random irregular times."""

    def __init__(
        self,
        root: str | Path,
        *,
        num_frames: int = 8,
        height: int = 64,
        width: int = 64,
        min_gap: float = 1 / 25,
        max_gap: float = 1 / 3,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"video folder {self.root} does not exist")
        exts = {e.lower() for e in extensions}
        # sorted, so a seed picks the same file on every machine
        self.files = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in exts and p.is_file()
        )
        if not self.files:
            raise FileNotFoundError(f"no video files ({', '.join(sorted(exts))}) under {self.root}")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.min_gap, self.max_gap = min_gap, max_gap
        self._info: dict[Path, VideoInfo] = {}  # probing scans the whole file: do it once per file

    def sample_clip(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        path = self.files[rng.integers(len(self.files))]
        offsets = sample_gaps(rng, self.num_frames, self.min_gap, self.max_gap)  # (T,)
        try:
            if path not in self._info:
                self._info[path] = probe_video(path)
            info = self._info[path]
            last = info.duration - 1 / info.fps  # pts of the last frame
            if offsets[-1] > last:
                raise BadClipError(
                    f"{path}: too short ({info.duration:.2f} s) for a clip spanning {offsets[-1]:.2f} s"
                )
            start = rng.uniform(0, last - offsets[-1])
            frames, times = decode_frames(path, start + offsets)  # (T, 3, H, W), (T,)
        except VideoDecodeError as e:
            raise BadClipError(str(e)) from e
        # true times: neighbouring requests closer than a frame interval may share a frame (gap 0)
        return {
            "frames": resize_center_crop(frames, self.height, self.width),
            "timestamps": times - times[0],
        }
