"""Cityscapes in its public layout:

    <root>/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame:06d>_leftImg8bit.png  30-frame snippets
    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame:06d>_leftImg8bit.png           the labelled frames
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame:06d>_gtFine_labelIds.png            label of the 20th snippet frame

19 train ids from the label ids (everything else IGNORE_INDEX). The "val" protocol: 7 frames of
the sequence 0.1875 s (3 frames at 16 fps, as the reference) apart ending on the labelled frame.
"train": each labelled frame alone (T = 1), read from leftImg8bit_sequence, else leftImg8bit;
with clips=True, the val protocol's clips of the train sequences.
"""

import os
from pathlib import Path

import numpy as np
import torch

from deltaworld.data.frame_datasets import FrameClips, clip_numbers, read_label
from deltaworld.data.labelled import IGNORE_INDEX

# official label id -> train id (cityscapesScripts' labels.py)
TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
LABEL_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.int64)
LABEL_TO_TRAIN[list(TRAIN_IDS)] = list(TRAIN_IDS.values())


class Cityscapes(FrameClips):
    name = "cityscapes"
    num_classes = 19

    def __init__(
        self,
        *,
        root: str | os.PathLike,
        split: str = "val",
        frame_size: int = 256,
        num_frames: int = 7,
        stride_seconds: float = 0.1875,
        clips: bool | None = None,
        fps: float = 16.0,
    ) -> None:
        super().__init__(root=root, split=split, frame_size=frame_size, fps=fps, clips=clips)
        images = self.root / "leftImg8bit_sequence" / split
        if split == "train" and not images.is_dir():
            images = self.root / "leftImg8bit" / split
        length, stride = (num_frames, int(stride_seconds * fps)) if self.clips else (1, 1)
        for label in sorted((self.root / "gtFine" / split).glob("*/*_gtFine_labelIds.png")):
            city, seq, frame = label.name.removesuffix("_gtFine_labelIds.png").split("_")
            numbers = clip_numbers(int(frame), length, stride)
            paths = [images / label.parent.name / f"{city}_{seq}_{i:06d}_leftImg8bit.png" for i in numbers]
            self.samples.append((paths, numbers, label))
        self._require_samples(f"gtFine/{split}/<city>/*_gtFine_labelIds.png")

    def load_label(self, path: Path) -> dict[str, torch.Tensor]:
        return {"segmentation": torch.from_numpy(LABEL_TO_TRAIN[read_label(path)])}
