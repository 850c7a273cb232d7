"""Shared machinery of the evaluation adapters (VSPW, Cityscapes, KITTI): labelled clips read from
folders of frames, in the item layout of data.labelled.

A sample is (frame paths, frame numbers, label path): the frames are read, optionally cropped
(KITTI), resized so the short side is `frame_size` with the long side capped at 2x, and timed at
frame number / fps (t0 = 0); the label belongs to the last frame and keeps its own resolution.
Every unreadable or missing file raises an error naming it: evaluation never skips.
"""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from deltaworld.data.clips import resize_short_side
from deltaworld.data.media import load_image

SPLITS = ("train", "val")


class DatasetFileError(RuntimeError):
    """A file of an evaluation dataset is missing or unreadable; the message names it."""


def read_label(path: str | os.PathLike) -> np.ndarray:
    """The integer array of a label PNG (class ids, or KITTI's depth x 256)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im).copy()
    except (OSError, ValueError) as e:
        raise DatasetFileError(f"{path}: unreadable label ({e})") from e


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def clip_numbers(last: int, num_frames: int, stride: int) -> list[int]:
    """Frame numbers of a clip ending at frame `last`, `stride` frames apart."""
    return [last - (num_frames - 1 - i) * stride for i in range(num_frames)]


class FrameClips(Dataset):
    """Base of the adapters: subclasses fill `samples` and define `load_label`."""

    name: str
    num_classes: int | None = None
    depth_range: tuple[float, float] | None = None

    def __init__(
        self,
        *,
        root: str | os.PathLike,
        split: str,
        frame_size: int,
        fps: float,
        clips: bool | None,
        max_aspect: float = 2.0,
    ) -> None:
        self.root, self.split = Path(root), check_split(split)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name} root {self.root} does not exist")
        self.frame_size, self.fps, self.max_aspect = frame_size, fps, max_aspect
        # the clip protocol (T frames ending on the labelled one) by default only for "val";
        # clips=True gives training clips of the train split (a world model trained on this data)
        self.clips = split == "val" if clips is None else clips
        self.samples: list[tuple[list[Path], list[int], Path]] = []

    def _require_samples(self, expected: str) -> None:
        if not self.samples:
            raise FileNotFoundError(f"no {self.name} {self.split} samples under {self.root}: expected {expected}")

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:  # stable across runs: part of token-cache fingerprints
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, frame_size={self.frame_size}, "
            f"clips={self.clips}, samples={len(self)})"
        )

    def crop(self, array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Crop applied alike to frames (..., H, W) and labels (H, W); none by default."""
        return array

    def load_label(self, path: Path) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        paths, numbers, label_path = self.samples[index]
        try:
            frames = torch.stack([load_image(p) for p in paths])  # (T, 3, H, W)
        except RuntimeError as e:
            raise DatasetFileError(str(e)) from e
        frames = resize_short_side(self.crop(frames), self.frame_size, max_aspect=self.max_aspect)
        times = (torch.tensor(numbers, dtype=torch.float64) - numbers[0]) / self.fps
        return {"frames": frames, "timestamps": times.float(), **self.load_label(label_path), "index": index}
