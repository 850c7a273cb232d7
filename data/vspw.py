"""VSPW (video scene parsing) in its public layout:

    <root>/train.txt, val.txt          one video name per line
    <root>/data/<video>/origin/*.jpg   frames (15 fps)
    <root>/data/<video>/mask/*.png     class ids 0..124, 0 = unlabelled; same file names

124 classes after shifting ids by -1 (0 and anything above 124 become IGNORE_INDEX). The "val"
protocol: a labelled frame every `label_interval` frames (the 20th, 40th, ...), each the last of
7 frames 0.2 s (3 frames) apart. "train": the same labelled frames alone (T = 1), from train.txt;
with clips=True, the train videos' clips (for training a world model on VSPW).
"""

import os
from pathlib import Path

import numpy as np
import torch

from deltaworld.data.frame_datasets import FrameClips, clip_numbers, read_label
from deltaworld.data.labelled import IGNORE_INDEX

NUM_CLASSES = 124


class VSPW(FrameClips):
    name = "vspw"
    num_classes = NUM_CLASSES

    def __init__(
        self,
        *,
        root: str | os.PathLike,
        split: str = "val",
        frame_size: int = 256,
        num_frames: int = 7,
        stride_seconds: float = 0.2,
        clips: bool | None = None,
        fps: float = 15.0,
        label_interval: int = 20,
    ) -> None:
        super().__init__(root=root, split=split, frame_size=frame_size, fps=fps, clips=clips)
        list_file = self.root / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"VSPW split list {list_file} not found")
        length, stride = (num_frames, int(stride_seconds * fps)) if self.clips else (1, 1)
        for video in (line.strip() for line in list_file.read_text().splitlines()):
            if not video:
                continue
            folder = self.root / "data" / video
            # "._*" are macOS resource forks shipped inside the public archive
            frames = sorted(p for p in (folder / "origin").glob("*.jpg") if not p.name.startswith("._"))
            for last in range(label_interval - 1, len(frames), label_interval):
                numbers = clip_numbers(last, length, stride)
                if numbers[0] >= 0:
                    label = folder / "mask" / frames[last].with_suffix(".png").name
                    self.samples.append(([frames[i] for i in numbers], numbers, label))
        self._require_samples("data/<video>/origin/*.jpg for the videos listed in " + list_file.name)

    def load_label(self, path: Path) -> dict[str, torch.Tensor]:
        ids = read_label(path).astype(np.int64) - 1  # (h, w)
        ids[(ids < 0) | (ids >= NUM_CLASSES)] = IGNORE_INDEX
        return {"segmentation": torch.from_numpy(ids)}
