"""`deltaworld bench data`: training clips per second (8 frames, 224 px, paper gaps, augmentation)
from raw video files vs webdataset shards of the mp4 bytes vs shards of JPEG frames, with 0 and 2
DataLoader workers, and the bytes each format stores per video. The videos are generated (synthetic
textured scenes, 4 s at 25 fps, 320x240, libx264), so the figures compare formats, not datasets.
"""

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from deltaworld.data.shard_stream import ShardSource
from deltaworld.data.shards import PackSettings, pack_shards
from deltaworld.data.sources import VideoFolderSource
from deltaworld.data.stream import ClipStream
from deltaworld.data.synthetic import render_scene, sample_scene
from deltaworld.data.video import torchcodec_available, write_video

NUM_VIDEOS, SECONDS, FPS, HEIGHT, WIDTH = 16, 4, 25, 240, 320
CLIP = dict(num_frames=8, height=224, width=224, augment=True)
BATCH, BATCHES = 8, 6


def make_videos(root: Path) -> None:
    for i in range(NUM_VIDEOS):
        scene = sample_scene(np.random.default_rng(i), height=HEIGHT, width=WIDTH, num_classes=4, num_shapes=3)
        frames = render_scene(scene, np.arange(SECONDS * FPS) / FPS)["frames"]  # (T, 3, H, W)
        write_video(root / f"video{i:03d}.mp4", frames, FPS)


def clips_per_second(dataset, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=workers)
    batches = iter(loader)
    next(batches)  # start-up (worker spawn, first shard open) is not throughput
    start = time.perf_counter()
    for _ in range(BATCHES):
        next(batches)
    return BATCHES * BATCH / (time.perf_counter() - start)


def bench_data() -> Iterator[str]:
    torch.set_num_threads(1)
    decoder = "torchcodec" if torchcodec_available() else "PyAV"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "raw").mkdir()
        make_videos(tmp / "raw")
        raw_bytes = sum(f.stat().st_size for f in (tmp / "raw").iterdir()) / NUM_VIDEOS
        manifests = {
            fmt: pack_shards(tmp / "raw", tmp / fmt, PackSettings(format=fmt, samples_per_shard=4, short_side=256))
            for fmt in ("video", "jpeg")
        }
        datasets = {
            "raw files (mp4)": lambda: ClipStream(VideoFolderSource(tmp / "raw", **CLIP), batch_size=BATCH, seed=0),
            "shards of mp4 bytes": lambda: ShardSource(str(tmp / "video"), shuffle_buffer=4, **CLIP).stream(seed=0),
            "shards of JPEG frames (256 px)": lambda: ShardSource(str(tmp / "jpeg"), shuffle_buffer=4, **CLIP).stream(
                seed=0
            ),
        }
        sizes = [raw_bytes, manifests["video"]["bytes_per_sample"], manifests["jpeg"]["bytes_per_sample"]]
        yield (
            f"data loading: {NUM_VIDEOS} generated videos of {SECONDS} s at {FPS} fps, {WIDTH}x{HEIGHT}; "
            f"decoder {decoder}"
        )
        yield (
            f"clips of {CLIP['num_frames']} frames at {CLIP['height']} px with augmentation, batch {BATCH}, "
            f"{os.cpu_count()} CPUs"
        )
        yield f"{'format':<32}{'bytes/video':>12}{'clips/s w=0':>13}{'clips/s w=2':>13}"
        for (name, make), size in zip(datasets.items(), sizes, strict=True):
            rates = [clips_per_second(make(), workers) for workers in (0, 2)]
            yield f"{name:<32}{size:>12,.0f}{rates[0]:>13.1f}{rates[1]:>13.1f}"
