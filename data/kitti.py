"""KITTI depth (Eigen split) in the public layout of the raw drives plus the annotated depth maps:

    <root>/<date>/<drive>/image_02/data/<frame:010d>.png                           raw frames (10 fps)
    <root>/{train,val}/<drive>/proj_depth/groundtruth/image_02/<frame:010d>.png    depth x 256, 0 = none

"val" protocol: the Eigen test frames listed in `split_file` (lines "<date>/<drive>/image_02/data/
<frame>.png <depth path or None> <focal>": the public Eigen test list of the KITTI depth
literature, e.g. `eigen_test_files_with_gt.txt` of the BTS / monodepth2 releases) that have
annotated depth, each the last of 7 frames 0.2 s (2 frames) apart. "train": every `train_interval`-th
annotated frame of the depth-completion train drives, minus the Eigen test drives (T = 1; clips
with clips=True).
Frames and depth get the KB crop (bottom 352 x centre 1216); depth outside the Garg crop or
outside (1e-3, 80) m is invalid (0).
"""

import os
from pathlib import Path

import numpy as np
import torch

from deltaworld.data.frame_datasets import FrameClips, clip_numbers, read_label

KB_HEIGHT, KB_WIDTH = 352, 1216
GARG = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # top, bottom, left, right (fractions)
DEPTH_RANGE = (1e-3, 80.0)


def garg_valid(depth: np.ndarray) -> np.ndarray:
    """(h, w) bool: inside the Garg crop and the evaluated depth range."""
    h, w = depth.shape
    top, bottom, left, right = GARG
    inside = np.zeros_like(depth, dtype=bool)
    inside[int(top * h) : int(bottom * h), int(left * w) : int(right * w)] = True
    return inside & (depth > DEPTH_RANGE[0]) & (depth < DEPTH_RANGE[1])


class KITTI(FrameClips):
    name = "kitti"
    depth_range = DEPTH_RANGE

    def __init__(
        self,
        *,
        root: str | os.PathLike,
        split: str = "val",
        frame_size: int = 256,
        num_frames: int = 7,
        stride_seconds: float = 0.2,
        clips: bool | None = None,
        fps: float = 10.0,
        split_file: str | os.PathLike,
        min_label_frame: int = 19,  # the reference protocol's sample set starts here
        train_interval: int = 10,
    ) -> None:
        super().__init__(root=root, split=split, frame_size=frame_size, fps=fps, clips=clips)
        if not Path(split_file).is_file():
            raise FileNotFoundError(
                f"KITTI Eigen split list {split_file} not found: give split_file=<eigen_test_files_with_gt.txt> "
                "(or set KITTI_EIGEN_SPLIT), the list of Eigen test frames with their annotated depth"
            )
        test_frames = [line.split() for line in Path(split_file).read_text().splitlines() if line.strip()]
        length, stride = (num_frames, int(stride_seconds * fps)) if self.clips else (1, 1)
        if split == "val":
            for image, depth, *_ in test_frames:
                date, drive, *_, frame = image.split("/")
                last = int(Path(frame).stem)
                depth_dir = self._depth_dir(drive)
                if depth == "None" or depth_dir is None or last < min_label_frame:
                    continue
                numbers = clip_numbers(last, length, stride)
                if numbers[0] >= 0:
                    self.samples.append(self._sample(date, drive, numbers, depth_dir))
            self._require_samples(
                f"<drive>/proj_depth/groundtruth/image_02 under train/ or val/ for the drives of {split_file}"
            )
        else:
            test_drives = {image.split("/")[1] for image, *_ in test_frames}
            for depth_dir in sorted((self.root / "train").glob("*/proj_depth/groundtruth/image_02")):
                drive = depth_dir.parents[2].name
                if drive in test_drives:
                    continue
                for depth in sorted(depth_dir.glob("*.png"))[::train_interval]:
                    numbers = clip_numbers(int(depth.stem), length, stride)
                    if numbers[0] >= 0:
                        self.samples.append(self._sample(drive[:10], drive, numbers, depth_dir))
            self._require_samples("train/<drive>/proj_depth/groundtruth/image_02/*.png")

    def _depth_dir(self, drive: str) -> Path | None:
        for split in ("val", "train"):
            folder = self.root / split / drive / "proj_depth" / "groundtruth" / "image_02"
            if folder.is_dir():
                return folder
        return None

    def _sample(self, date: str, drive: str, numbers: list[int], depth_dir: Path) -> tuple:
        images = self.root / date / drive / "image_02" / "data"
        return [images / f"{i:010d}.png" for i in numbers], numbers, depth_dir / f"{numbers[-1]:010d}.png"

    def crop(self, array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        h, w = array.shape[-2:]
        left = (w - KB_WIDTH) // 2
        return array[..., h - KB_HEIGHT :, left : left + KB_WIDTH]

    def load_label(self, path: Path) -> dict[str, torch.Tensor]:
        depth = self.crop(read_label(path).astype(np.float32) / 256.0)  # (352, 1216) metres
        return {"depth": torch.from_numpy(np.where(garg_valid(depth), depth, 0.0).astype(np.float32))}
