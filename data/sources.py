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
from torch.utils.data import Dataset

from deltaworld.data.clips import BadClipError, ClipSampler, resize_center_crop
from deltaworld.data.frame_datasets import DatasetFileError
from deltaworld.data.media import VIDEO_EXTENSIONS, MediaInfo, find_media, open_media, probe_media
from deltaworld.data.synthetic import render_clip, sample_gaps
from deltaworld.data.video import VideoDecodeError

__all__ = [
    "BadClipError",
    "ClipSource",
    "LabelledClipSource",
    "SyntheticSource",
    "VideoFolderSource",
    "resize_center_crop",
    "sample_gaps",
]


@runtime_checkable
class ClipSource(Protocol):
    def sample_clip(self, rng: np.random.Generator) -> dict[str, torch.Tensor]: ...


class SyntheticSource:
    """Labelled synthetic clips (see data.synthetic.render_clip). `event_rate` > 0 makes the futures
    uncertain: each object turns (within +-`event_turn` degrees) and changes speed (its initial speed
    times a factor in `event_speed`) at random times, `event_rate` times per second on average."""

    def __init__(
        self,
        *,
        num_frames: int = 8,
        height: int = 64,
        width: int = 64,
        num_classes: int = 4,
        num_shapes: int = 3,
        object_speed: tuple[float, float] = (0.1, 0.3),
        min_gap: float = 1 / 25,
        max_gap: float = 1 / 3,
        event_rate: float = 0.0,
        event_turn: float = 90.0,
        event_speed: tuple[float, float] = (0.5, 1.5),
    ) -> None:
        self.kwargs = dict(
            num_frames=num_frames,
            height=height,
            width=width,
            num_classes=num_classes,
            num_shapes=num_shapes,
            object_speed=tuple(object_speed),
            min_gap=min_gap,
            max_gap=max_gap,
            event_rate=event_rate,
            event_turn=event_turn,
            event_speed=tuple(event_speed),
        )

    def sample_clip(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return render_clip(rng, **self.kwargs)


class VideoFolderSource:
    """Clips from the videos under `root` (recursively; folders of frames too when `frame_fps` is
    set), at random irregular times (see data.clips.ClipSampler)."""

    def __init__(
        self,
        root: str | Path,
        *,
        num_frames: int = 8,
        height: int = 64,
        width: int = 64,
        min_gap: float = 1 / 25,
        max_gap: float = 1 / 3,
        augment: bool = False,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio_jitter: float = 4 / 3,
        hflip: bool = True,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        frame_fps: float | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"video folder {self.root} does not exist")
        self.files = find_media(self.root, extensions=extensions, frame_fps=frame_fps)
        if not self.files:
            raise FileNotFoundError(f"no video files ({', '.join(sorted(extensions))}) under {self.root}")
        self.frame_fps = frame_fps
        self.sampler = ClipSampler(
            num_frames=num_frames,
            height=height,
            width=width,
            min_gap=min_gap,
            max_gap=max_gap,
            augment=augment,
            scale=tuple(scale),
            ratio_jitter=ratio_jitter,
            hflip=hflip,
        )
        self._info: dict[Path, MediaInfo] = {}  # probing scans the whole file: do it once per file

    def sample_clip(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        path = self.files[rng.integers(len(self.files))]
        try:
            media = open_media(path, frame_fps=self.frame_fps)
            if path not in self._info:
                self._info[path] = probe_media(media)
        except VideoDecodeError as e:
            raise BadClipError(str(e)) from e
        return self.sampler.sample(media, rng, info=self._info[path])


class LabelledClipSource:
    """Training clips from a labelled clip dataset (an evaluation adapter built with clips=True, e.g.
    `data.vspw.VSPW(split="train", clips=True)`): a random item, its frames cropped to height x width
    (augmented, or the centre), labels dropped. A missing or unreadable file is a BadClipError."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        height: int = 64,
        width: int = 64,
        augment: bool = False,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio_jitter: float = 4 / 3,
        hflip: bool = True,
    ) -> None:
        self.dataset = dataset
        self.sampler = ClipSampler(
            height=height, width=width, augment=augment, scale=tuple(scale), ratio_jitter=ratio_jitter, hflip=hflip
        )

    def sample_clip(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        index = int(rng.integers(len(self.dataset)))
        try:
            item = self.dataset[index]
        except DatasetFileError as e:
            raise BadClipError(str(e)) from e
        return {"frames": self.sampler.transform(item["frames"], rng), "timestamps": item["timestamps"]}


class MiddleClips(Dataset):
    """Evaluation clips of a video folder: the middle clip (frames `stride` seconds apart) of
    `num_clips` evenly spaced inputs, centre-cropped, no randomness. A bad input is an error naming it."""

    def __init__(
        self,
        root: str | Path,
        *,
        num_clips: int,
        num_frames: int = 8,
        height: int = 64,
        width: int = 64,
        stride: float = 0.2,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        frame_fps: float | None = None,
    ) -> None:
        files = find_media(root, extensions=extensions, frame_fps=frame_fps)
        if not files:
            raise FileNotFoundError(f"no video files ({', '.join(sorted(extensions))}) under {root}")
        picks = np.unique(np.linspace(0, len(files) - 1, min(num_clips, len(files))).round().astype(int))
        self.files, self.frame_fps = [files[i] for i in picks], frame_fps
        self.sampler = ClipSampler(num_frames=num_frames, height=height, width=width, eval_stride=stride)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sampler.middle(open_media(self.files[index], frame_fps=self.frame_fps))
