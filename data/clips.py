"""Clip sampling and augmentation as in the paper.

Training clips: T frames with gaps i.i.d. uniform in [min_gap, max_gap] seconds (1/25 .. 1/3 by
default) from a random start, then one random resized crop (area scale 0.6..1, aspect within 4/3 of
the output's) and one horizontal flip decision applied to every frame of the clip, so motion between
frames is untouched. Evaluation clips: evenly strided frames around the middle of the video, centre
crop, no randomness. Everything random is drawn from the caller's generator: one seed, one clip.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deltaworld.data.media import Media, MediaInfo, media_label, probe_media, read_media
from deltaworld.data.synthetic import sample_gaps
from deltaworld.data.video import VideoDecodeError


class BadClipError(RuntimeError):
    """An input cannot yield a clip; the message names the file and the reason."""


def random_clip_times(
    rng: np.random.Generator, last: float, num_frames: int, min_gap: float, max_gap: float, *, name: str = "video"
) -> np.ndarray:
    """Requested times (T,) seconds: paper gaps from a uniform random start; `last` is the time of
    the video's last frame."""
    offsets = sample_gaps(rng, num_frames, min_gap, max_gap)  # (T,) from 0
    if offsets[-1] > last:
        raise BadClipError(f"{name}: too short ({last:.2f} s of frames) for a clip spanning {offsets[-1]:.2f} s")
    return rng.uniform(0, last - offsets[-1]) + offsets


def middle_clip_times(last: float, num_frames: int, stride: float, *, name: str = "video") -> np.ndarray:
    """Requested times (T,) seconds: `stride` apart, centred on the middle of the video."""
    span = (num_frames - 1) * stride
    if span > last:
        raise BadClipError(f"{name}: too short ({last:.2f} s of frames) for a clip spanning {span:.2f} s")
    return (last - span) / 2 + stride * np.arange(num_frames)


def _crop_resize(frames: torch.Tensor, box: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> uint8 (T, 3, height, width): crop box (top, left, h, w), antialiased bilinear."""
    top, left, ch, cw = box
    crop = frames[:, :, top : top + ch, left : left + cw]
    if (ch, cw) == (height, width):
        return crop.contiguous()
    out = F.interpolate(crop.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> uint8 (T, 3, height, width), the whole frame, antialiased bilinear."""
    return _crop_resize(frames, (0, 0, *frames.shape[-2:]), height, width)


def resize_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> uint8 (T, 3, height, width): scale so the frame covers the target,
    keep the centre, antialiased bilinear. Aspect ratio is kept, so nothing is squashed."""
    H, W = frames.shape[-2:]
    scale = max(height / H, width / W)
    # crop in source pixels first: one resize, and only of what is kept
    ch, cw = min(H, round(height / scale)), min(W, round(width / scale))
    return _crop_resize(frames, ((H - ch) // 2, (W - cw) // 2, ch, cw), height, width)


def resize_short_side(frames: torch.Tensor, size: int, *, max_aspect: float = 2.0) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> short side `size`, long side scaled alike but capped at `max_aspect` x
    `size` (the evaluation protocol's resize; beyond the cap the frame is squeezed, not cropped)."""
    H, W = frames.shape[-2:]
    scale, cap = size / min(H, W), int(size * max_aspect)
    return _crop_resize(frames, (0, 0, H, W), min(round(H * scale), cap), min(round(W * scale), cap))


def random_crop_box(
    rng: np.random.Generator, H: int, W: int, *, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, h, w) covering scale[0]..scale[1] of the area with w/h in ratio (log-uniform),
    as torchvision's RandomResizedCrop but drawn from `rng`; the centred largest box after 10 misses."""
    area, log_ratio = H * W, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= W and 0 < h <= H:
            return int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1)), h, w
    aspect = min(max(W / H, ratio[0]), ratio[1])
    h, w = (H, min(W, round(H * aspect))) if W / H > aspect else (min(H, round(W / aspect)), W)
    return (H - h) // 2, (W - w) // 2, h, w


@dataclass(frozen=True)
class ClipSampler:
    """Turns a video (any `Media`) into a clip {"frames" uint8 (T, 3, height, width), "timestamps"
    float32 (T,) true times with t0 = 0}. Neighbouring requests closer than a frame interval may
    show the same frame (a true gap of 0)."""

    num_frames: int = 8
    height: int = 64
    width: int = 64
    min_gap: float = 1 / 25
    max_gap: float = 1 / 3
    augment: bool = False  # random resized crop + flip; otherwise the centre crop
    scale: tuple[float, float] = (0.6, 1.0)
    ratio_jitter: float = 4 / 3  # crop aspect within [out/jitter, out*jitter] (3:4..4:3 for squares)
    hflip: bool = True
    eval_stride: float = 0.2  # seconds between the frames of a middle-of-video evaluation clip

    def sample(
        self, media: Media, rng: np.random.Generator, *, info: MediaInfo | None = None, name: str | None = None
    ) -> dict[str, torch.Tensor]:
        """A random training clip (`info`: the media's probe, when known); BadClipError names the
        input when it cannot give one."""
        label = media_label(media, name)
        try:
            info = info or probe_media(media, name=name)
            times = random_clip_times(rng, info.last, self.num_frames, self.min_gap, self.max_gap, name=label)
            frames, true_times = read_media(media, times, name=name)  # (T, 3, H, W), (T,)
        except VideoDecodeError as e:
            raise BadClipError(str(e)) from e
        return {"frames": self.transform(frames, rng), "timestamps": true_times - true_times[0]}

    def middle(
        self, media: Media, *, info: MediaInfo | None = None, name: str | None = None
    ) -> dict[str, torch.Tensor]:
        """The deterministic evaluation clip; errors (VideoDecodeError, BadClipError) name the input."""
        label = media_label(media, name)
        info = info or probe_media(media, name=name)
        times = middle_clip_times(info.last, self.num_frames, self.eval_stride, name=label)
        frames, true_times = read_media(media, times, name=name)
        return {"frames": resize_center_crop(frames, self.height, self.width), "timestamps": true_times - true_times[0]}

    def transform(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """(T, 3, H, W) -> (T, 3, height, width): one crop and one flip decision for the whole clip."""
        if not self.augment:
            return resize_center_crop(frames, self.height, self.width)
        aspect = self.width / self.height
        box = random_crop_box(
            rng, *frames.shape[-2:], scale=self.scale, ratio=(aspect / self.ratio_jitter, aspect * self.ratio_jitter)
        )
        out = _crop_resize(frames, box, self.height, self.width)
        return out.flip(-1) if self.hflip and rng.random() < 0.5 else out
