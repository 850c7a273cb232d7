"""Evaluation adapters (VSPW, Cityscapes, KITTI) on tiny fixtures written in the public on-disk
layouts. Frame n of every fixture is a constant grey level GREY0 + GREY_STEP * n, so a frame's
content names its number."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deltaworld.data.cityscapes import Cityscapes
from deltaworld.data.frame_datasets import DatasetFileError
from deltaworld.data.kitti import KITTI
from deltaworld.data.labelled import IGNORE_INDEX
from deltaworld.data.vspw import VSPW

GREY0, GREY_STEP = 4, 6


def grey(number: int, h: int, w: int) -> Image.Image:
    return Image.fromarray(np.full((h, w, 3), GREY0 + GREY_STEP * number, dtype=np.uint8))


def frame_numbers(frames: torch.Tensor) -> list[int]:
    return ((frames.float().mean((1, 2, 3)) - GREY0) / GREY_STEP).round().long().tolist()


def make_vspw(root: Path, *, videos=("v1", "v2"), frames: int = 41, size=(24, 40)) -> Path:
    """root/{train,val}.txt, root/data/<video>/{origin/*.jpg, mask/*.png} (mask ids 0..125)."""
    for split, names in (("val", videos), ("train", ["t1"])):
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
        for video in names:
            (root / "data" / video / "origin").mkdir(parents=True)
            (root / "data" / video / "mask").mkdir(parents=True)
            for i in range(frames):
                grey(i, *size).save(root / "data" / video / "origin" / f"{i:08d}.jpg", quality=95)
                mask = (np.arange(size[0] * size[1]).reshape(size) % 126).astype(np.uint8)
                Image.fromarray(mask).save(root / "data" / video / "mask" / f"{i:08d}.png")
    (root / "data" / "v1" / "origin" / "._00000000.jpg").write_bytes(b"resource fork")
    return root


def make_cityscapes(root: Path, *, split: str = "val", size=(32, 64)) -> Path:
    """One city, one 30-frame snippet (frames 0..29), gtFine label at frame 19."""
    seq = root / "leftImg8bit_sequence" / split / "lindau"
    seq.mkdir(parents=True)
    for i in range(30):
        grey(i, *size).save(seq / f"lindau_000000_{i:06d}_leftImg8bit.png")
    labels = root / "gtFine" / split / "lindau"
    labels.mkdir(parents=True)
    ids = np.zeros(size, dtype=np.uint8)
    ids[:, : size[1] // 2] = 7  # road -> train id 0
    ids[:, size[1] // 2 :] = 26  # car -> 13
    ids[0] = 3  # out of roi -> ignored
    Image.fromarray(ids).save(labels / "lindau_000000_000019_gtFine_labelIds.png")
    return root


KITTI_DRIVE, KITTI_DATE = "2011_09_26_drive_0002_sync", "2011_09_26"


def make_kitti(root: Path, *, last: int = 21, h: int = 375, w: int = 1242) -> Path:
    """One raw drive (frames 0..last), annotated depth of the later frames under val/, an Eigen-style list."""
    images = root / KITTI_DATE / KITTI_DRIVE / "image_02" / "data"
    depth_dir = root / "val" / KITTI_DRIVE / "proj_depth" / "groundtruth" / "image_02"
    images.mkdir(parents=True)
    depth_dir.mkdir(parents=True)
    for i in range(last + 1):
        grey(i, h, w).save(images / f"{i:010d}.png")
    depth = np.zeros((h, w), dtype=np.uint16)
    depth[h // 2 :, :] = 10 * 256  # 10 m in the lower half, no measurement above
    depth[-1, :] = 90 * 256  # beyond 80 m: invalid
    for i in range(5, last + 1):
        Image.fromarray(depth).save(depth_dir / f"{i:010d}.png")
    lines = [
        f"{KITTI_DATE}/{KITTI_DRIVE}/image_02/data/{i:010d}.png "
        f"{KITTI_DRIVE}/proj_depth/groundtruth/image_02/{i:010d}.png 721.5377"
        for i in (3, 19, last)
    ]
    lines.append(f"{KITTI_DATE}/{KITTI_DRIVE}/image_02/data/{last - 1:010d}.png None 721.5377")
    (root / "eigen.txt").write_text("\n".join(lines) + "\n")
    return root


def check_item(item: dict, frame_size: int, num_frames: int) -> None:
    frames, times = item["frames"], item["timestamps"]
    assert frames.dtype == torch.uint8 and frames.shape[:2] == (num_frames, 3)
    assert min(frames.shape[-2:]) == frame_size and max(frames.shape[-2:]) <= 2 * frame_size
    assert times.dtype == torch.float32 and times.shape == (num_frames,) and times[0] == 0


def test_vspw_val_clips_and_labels(tmp_path):
    ds = VSPW(root=make_vspw(tmp_path), split="val", frame_size=16)
    assert (ds.name, ds.num_classes, ds.depth_range) == ("vspw", 124, None)
    assert len(ds) == 4  # labelled frames 19 and 39 of two videos
    item = ds[1]
    check_item(item, 16, 7)
    assert item["frames"].shape[-2:] == (16, 27)  # 24x40 -> short side 16, aspect kept
    assert frame_numbers(item["frames"]) == [21, 24, 27, 30, 33, 36, 39]  # 0.2 s = 3 frames at 15 fps
    torch.testing.assert_close(item["timestamps"], torch.arange(7) * 0.2)
    seg = item["segmentation"]
    assert seg.dtype == torch.int64 and seg.shape == (24, 40) and "depth" not in item
    mask = torch.from_numpy(np.arange(24 * 40).reshape(24, 40) % 126).long()
    expected = torch.where((mask >= 1) & (mask <= 124), mask - 1, IGNORE_INDEX)
    assert torch.equal(seg, expected)
    assert item["index"] == 1


def test_vspw_train_single_frames(tmp_path):
    ds = VSPW(root=make_vspw(tmp_path), split="train", frame_size=16)
    assert len(ds) == 2
    check_item(ds[0], 16, 1)
    assert frame_numbers(ds[0]["frames"]) == [19]


def test_cityscapes_val_and_train(tmp_path):
    make_cityscapes(tmp_path, split="val")
    make_cityscapes(tmp_path, split="train")
    ds = Cityscapes(root=tmp_path, split="val", frame_size=16)
    assert (ds.name, ds.num_classes, len(ds)) == ("cityscapes", 19, 1)
    item = ds[0]
    check_item(item, 16, 7)
    assert item["frames"].shape[-2:] == (16, 32)
    assert frame_numbers(item["frames"]) == [1, 4, 7, 10, 13, 16, 19]
    torch.testing.assert_close(item["timestamps"], torch.arange(7) * 0.1875)
    seg = item["segmentation"]
    assert seg.shape == (32, 64)
    assert (seg[1:, :32] == 0).all() and (seg[1:, 32:] == 13).all() and (seg[0] == IGNORE_INDEX).all()
    train = Cityscapes(root=tmp_path, split="train", frame_size=16)
    check_item(train[0], 16, 1)
    assert frame_numbers(train[0]["frames"]) == [19]


def test_kitti_val_clip_crop_and_depth(tmp_path):
    make_kitti(tmp_path)
    ds = KITTI(root=tmp_path, split="val", frame_size=32, split_file=tmp_path / "eigen.txt")
    assert (ds.name, ds.num_classes, ds.depth_range) == ("kitti", None, (1e-3, 80.0))
    assert len(ds) == 2  # frame 3 precedes min_label_frame, the None line has no depth
    item = ds[1]
    check_item(item, 32, 7)
    assert item["frames"].shape[-2:] == (32, 64)  # 352x1216 KB crop, long side capped at 2x
    assert frame_numbers(item["frames"]) == [9, 11, 13, 15, 17, 19, 21]
    torch.testing.assert_close(item["timestamps"], torch.arange(7) * 0.2)
    depth = item["depth"]
    assert depth.dtype == torch.float32 and depth.shape == (352, 1216) and "segmentation" not in item
    assert set(depth.unique().tolist()) == {0.0, 10.0}
    assert (depth[-1] == 0).all()  # 90 m: out of range
    rows = (depth > 0).any(1).nonzero().flatten()
    assert rows.min() >= int(0.40810811 * 352) and (depth[:, :43] == 0).all()  # Garg crop


def test_kitti_train_excludes_eigen_test_drives(tmp_path):
    make_kitti(tmp_path)
    other = "2011_09_28_drive_0001_sync"
    (tmp_path / "train" / other / "proj_depth" / "groundtruth" / "image_02").mkdir(parents=True)
    (tmp_path / "2011_09_28" / other / "image_02" / "data").mkdir(parents=True)
    for i in range(3):
        grey(i, 375, 1242).save(tmp_path / "2011_09_28" / other / "image_02" / "data" / f"{i:010d}.png")
        Image.fromarray(np.full((375, 1242), 512, np.uint16)).save(
            tmp_path / "train" / other / "proj_depth" / "groundtruth" / "image_02" / f"{i:010d}.png"
        )
    (tmp_path / "train" / KITTI_DRIVE).mkdir()  # a test drive under train/ must be left out
    ds = KITTI(root=tmp_path, split="train", frame_size=32, split_file=tmp_path / "eigen.txt", train_interval=2)
    assert len(ds) == 2 and frame_numbers(ds[1]["frames"]) == [2]
    check_item(ds[1], 32, 1)


@pytest.mark.parametrize("damage", ["missing_frame", "corrupt_frame", "corrupt_label"])
def test_evaluation_errors_name_the_file(tmp_path, damage):
    make_vspw(tmp_path, videos=("v1",))
    ds = VSPW(root=tmp_path, split="val", frame_size=16)
    bad = {
        "missing_frame": tmp_path / "data" / "v1" / "origin" / "00000030.jpg",
        "corrupt_frame": tmp_path / "data" / "v1" / "origin" / "00000033.jpg",
        "corrupt_label": tmp_path / "data" / "v1" / "mask" / "00000039.png",
    }[damage]
    if damage == "missing_frame":
        bad.unlink()
    else:
        bad.write_bytes(b"\x00garbage" * 20)
    ds[0]  # the first clip (label frame 19) is intact
    with pytest.raises(DatasetFileError, match=str(bad)):
        ds[1]


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VSPW(root=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VSPW(root=tmp_path)
    with pytest.raises(FileNotFoundError, match="gtFine/val"):
        Cityscapes(root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        Cityscapes(root=tmp_path, split="test")
