"""Labelled clips for the dense forecasting benchmark and for training its heads.

Every benchmark dataset (the synthetic one here; VSPW, Cityscapes and KITTI adapters) is a finite,
deterministic map-style Dataset whose item is

    frames        uint8   (T, 3, H, W)  short side = frame_size, aspect kept (long side capped)
    timestamps    float32 (T,)          seconds, t0 = 0
    segmentation  int64   (h, w)        label of the LAST frame, IGNORE_INDEX where unlabelled
    depth         float32 (h, w)        metres of the LAST frame, 0 where invalid
    index         int

with only the label keys the dataset has. Labels keep their own resolution; predictions are
upsampled to it. Each dataset exposes `name`, `num_classes` (None without segmentation) and
`depth_range` ((min, max) metres, None without depth). Heads train on items with T = 1.
"""

from torch.utils.data import Dataset

from deltaworld.data.sources import SyntheticSource
from deltaworld.data.stream import EVAL_STREAM, TRAIN_STREAM, FixedClips

IGNORE_INDEX = 255
SPLIT_STREAMS = {"train": TRAIN_STREAM, "val": EVAL_STREAM}


class SyntheticLabelled(Dataset):
    """`num_clips` fixed synthetic clips with the last frame's class and depth maps. The train and
    val splits are disjoint streams of the same seed. Depth lies within SyntheticSource's scene
    range (objects 2..20 m, background 25..55 m)."""

    name = "synthetic"
    depth_range = (1.0, 60.0)

    def __init__(self, *, num_clips: int, split: str = "val", seed: int = 0, num_frames: int = 7, **scene) -> None:
        """`scene`: the other keywords of SyntheticSource (size, classes, shapes, frame gaps)."""
        if split not in SPLIT_STREAMS:
            raise ValueError(f"split must be one of {sorted(SPLIT_STREAMS)}, got {split!r}")
        source = SyntheticSource(num_frames=num_frames, **scene)
        self.num_classes = source.kwargs["num_classes"]
        self.clips = FixedClips(source, num_clips=num_clips, seed=seed, stream=SPLIT_STREAMS[split])

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        return {
            "frames": clip["frames"],
            "timestamps": clip["timestamps"],
            "segmentation": clip["segmentation"][-1],
            "depth": clip["depth"][-1],
            "index": index,
        }
