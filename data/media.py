"""One interface over the two kinds of video the pipeline meets: an encoded video (a path, or its
bytes from a shard) and a sequence of still images with known times (a folder of frames, or the
JPEG frames of a shard sample). Both answer `probe_media` and `read_media`, with the same rule as
`data.video.decode_frames`: each requested time shows the last frame whose time <= it.
"""

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from deltaworld.data.video import PTS_EPS, VideoDecodeError, VideoInput, decode_frames, probe_video

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class FrameSequence:
    """Still frames (paths or encoded image bytes) shown at `timestamps` seconds (t0 = 0)."""

    frames: Sequence[str | os.PathLike | bytes]
    timestamps: np.ndarray  # (N,) float64, increasing
    name: str  # names the sequence in error messages

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, fps: float) -> "FrameSequence":
        """Every image of `folder`, in name order, at a constant `fps`."""
        folder = Path(folder)
        paths = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        return cls(frames=paths, timestamps=np.arange(len(paths)) / fps, name=str(folder))


Media = VideoInput | FrameSequence


@dataclass(frozen=True)
class MediaInfo:
    last: float  # seconds: time of the last frame (the latest time a clip may ask for)
    fps: float
    num_frames: int
    width: int
    height: int


def load_image(image: str | os.PathLike | bytes, name: str | None = None) -> torch.Tensor:
    """uint8 (3, H, W) RGB of an image file or its bytes; a bad image raises naming the file."""
    label = name or (os.fspath(image) if not isinstance(image, bytes) else "<image bytes>")
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
            array = np.asarray(im.convert("RGB"))  # (H, W, 3)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise VideoDecodeError(f"{label}: unreadable image ({e})") from e
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def probe_fps(ts: np.ndarray) -> float:
    """Average rate of frames shown at times `ts` (1 for a single frame)."""
    return float(len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 1.0


def probe_media(media: Media, *, name: str | None = None) -> MediaInfo:
    if isinstance(media, FrameSequence):
        if len(media.frames) == 0:
            raise VideoDecodeError(f"{media.name}: no frames")
        first = load_image(media.frames[0], _frame_name(media, 0))
        ts = media.timestamps
        return MediaInfo(float(ts[-1]), probe_fps(ts), len(ts), first.shape[2], first.shape[1])
    info = probe_video(media, name=name)
    return MediaInfo(info.duration - 1 / info.fps, info.fps, info.num_frames, info.width, info.height)


def media_label(media: Media, name: str | None = None) -> str:
    """What error messages call a video: `name` if given, its path, or its sequence name."""
    if name:
        return name
    if isinstance(media, FrameSequence):
        return media.name
    return f"<{len(media)} bytes>" if isinstance(media, bytes) else os.fspath(media)


def _frame_name(seq: FrameSequence, i: int) -> str:
    frame = seq.frames[i]
    return f"{seq.name} frame {i}" if isinstance(frame, bytes) else os.fspath(frame)


def read_media(
    media: Media, timestamps: Sequence[float], *, name: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames uint8 (T, 3, H, W) at the requested times and their true times float32 (T,)."""
    if not isinstance(media, FrameSequence):
        return decode_frames(media, timestamps, name=name)
    req = np.asarray(timestamps, dtype=np.float64)
    ts = media.timestamps
    if req.max() > ts[-1] + 1 / probe_fps(ts) + PTS_EPS:
        raise VideoDecodeError(
            f"{media.name}: requested time {req.max():.3f} s is beyond the last frame ({ts[-1]:.3f} s)"
        )
    index = np.clip(np.searchsorted(ts, req + PTS_EPS, side="right") - 1, 0, len(ts) - 1)
    images = {i: load_image(media.frames[i], _frame_name(media, i)) for i in np.unique(index)}
    shapes = {tuple(im.shape) for im in images.values()}
    if len(shapes) > 1:
        raise VideoDecodeError(f"{media.name}: frames differ in size {sorted(shapes)}")
    frames = torch.stack([images[i] for i in index])
    return frames, torch.from_numpy(ts[index].astype(np.float32))


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def find_media(
    root: str | os.PathLike, *, extensions: Sequence[str] = VIDEO_EXTENSIONS, frame_fps: float | None = None
) -> list[Path]:
    """Video files under `root` (recursively) and, when `frame_fps` is set, folders holding image
    frames; sorted, so a seed picks the same input on every machine."""
    exts = {e.lower() for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files = [f for f in filenames if not f.startswith(".")]
        found += [Path(dirpath, f) for f in files if Path(f).suffix.lower() in exts]
        if frame_fps and any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            found.append(Path(dirpath))
    return sorted(found)


def open_media(path: str | os.PathLike, *, frame_fps: float | None = None) -> Media:
    """A folder of frames (at `frame_fps`) or a video file, as `Media`."""
    if Path(path).is_dir():
        if not frame_fps:
            raise ValueError(f"{path} is a folder of frames: give its frame rate (frame_fps)")
        return FrameSequence.from_folder(path, frame_fps)
    return Path(path)
