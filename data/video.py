"""Video decoding at requested times, returning the true presentation times of the frames used.

Times are seconds on the stream's own timeline measured from its first frame (stream start_time),
so t = 0 is the first frame whatever the container's offset. Container headers are not trusted:
durations and frame counts come from the packets themselves.

A video is a path or the file's bytes (a webdataset shard sample). Two exact decoders: torchcodec
(its "exact" seek mode scans the stream once; needs the system FFmpeg libraries) when it imports,
PyAV (self-contained) otherwise; both return the same frames and times for the same request (tested).
decord and OpenCV seek to approximate frames and are deliberately not used.
"""

import functools
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

# a requested time this close to a frame's pts counts as reaching it (pts are rationals, times floats)
PTS_EPS = 1e-6


class VideoDecodeError(RuntimeError):
    """A video cannot be decoded as asked; the message names the file and the reason."""


@dataclass
class VideoInfo:
    path: str
    duration: float  # seconds, stream start (t = 0 of decode_frames) to the end of the last frame
    fps: float  # average
    num_frames: int
    width: int
    height: int


VideoInput = str | os.PathLike | bytes
BACKENDS = ("auto", "torchcodec", "pyav")


def _label(video: VideoInput, name: str | None) -> str:
    """What error messages call the video: its path, or the given name for in-memory bytes."""
    return name or (f"<{len(video)} bytes>" if isinstance(video, bytes) else os.fspath(video))


def _open(video: VideoInput, name: str | None = None) -> tuple[InputContainer, VideoStream]:
    path = _label(video, name)
    if not isinstance(video, bytes) and not os.path.isfile(video):
        raise VideoDecodeError(f"{path}: file not found")
    if (len(video) if isinstance(video, bytes) else os.path.getsize(video)) == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(io.BytesIO(video) if isinstance(video, bytes) else os.fspath(video))
    except av.error.FFmpegError as e:
        raise VideoDecodeError(f"{path}: cannot open as a video container ({e.strerror or e})") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path}: no video stream")
    return container, container.streams.video[0]


def _origin(stream: VideoStream) -> int:
    return stream.start_time if stream.start_time is not None else 0


def probe_video(video: VideoInput, *, name: str | None = None) -> VideoInfo:
    """Duration, average fps, frame count and size of the first video stream, from a scan of its
    packets (demuxing only, no decoding): mkv/webm headers often carry no duration or count."""
    path = _label(video, name)
    container, stream = _open(video, name)
    starts, ends = [], []
    try:
        with container:
            for packet in container.demux(stream):
                p = packet.pts if packet.pts is not None else packet.dts
                if p is None or packet.size == 0:  # flush packets carry no frame
                    continue
                starts.append(p)
                ends.append(p + (packet.duration or 0))
            origin, time_base, rate = _origin(stream), stream.time_base, stream.average_rate
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as e:
        raise VideoDecodeError(f"{path}: corrupt stream ({e.strerror or e})") from e
    if not starts:
        raise VideoDecodeError(f"{path}: no video frames")
    first, last = min(starts), max(starts)
    if not rate:
        rate = Fraction(len(starts) - 1) / ((last - first) * time_base) if last > first else Fraction(1)
    # without packet durations the last frame is taken to last 1/fps
    end = max(ends) if max(ends) > last else last + 1 / (rate * time_base)
    return VideoInfo(
        path=path,
        duration=float((end - origin) * time_base),
        fps=float(rate),
        num_frames=len(starts),
        width=width,
        height=height,
    )


def _scan(
    container: InputContainer, stream: VideoStream, targets: np.ndarray, seek_to: float
) -> tuple[list[VideoFrame | None], np.ndarray, VideoFrame | None, float, float]:
    """Seek backward to a keyframe at or before `seek_to` seconds and decode forward. Returns, per
    sorted target, the last frame with pts <= target (None if none) and its time; the first frame
    decoded and its time; and the stream's end time if decoding reached it (inf otherwise)."""
    origin, tb = _origin(stream), stream.time_base
    container.seek(origin + int(seek_to / tb), stream=stream, backward=True, any_frame=False)
    best = [None] * len(targets)  # kept as decoded frames; only the chosen ones go to RGB
    best_t = np.full(len(targets), -np.inf)
    first, first_t, last_t = None, np.inf, -np.inf
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = float((frame.pts - origin) * tb)
        # choose by pts, never by decode position: robust to reordered (B-frame) output
        for i in np.flatnonzero((t <= targets + PTS_EPS) & (t > best_t)):
            best[i], best_t[i] = frame, t
        if t < first_t:
            first, first_t = frame, t
        last_t = max(last_t, t)
        if t > targets[-1] + PTS_EPS:
            return best, best_t, first, first_t, np.inf
    end = last_t + 1 / float(stream.average_rate or stream.guessed_rate or 1)
    return best, best_t, first, first_t, end


@functools.cache
def torchcodec_available() -> bool:
    """torchcodec imports only where its FFmpeg libraries are installed; any failure means no."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception:  # ImportError, or OSError/RuntimeError from missing FFmpeg libraries
        return False
    return True


def _check_times(timestamps: Sequence[float]) -> np.ndarray:
    req = np.asarray(timestamps, dtype=np.float64)
    if req.ndim != 1 or len(req) == 0 or not np.all(np.isfinite(req)) or req.min() < 0:
        raise ValueError(f"timestamps must be a non-empty 1-D sequence of finite times >= 0, got {timestamps}")
    return req


def _beyond_end(path: str, requested: float, end: float) -> VideoDecodeError:
    return VideoDecodeError(f"{path}: requested time {requested:.3f} s is beyond the end of the stream ({end:.3f} s)")


def _decode_pyav(video: VideoInput, req: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(req, kind="stable")
    targets = req[order]
    container, stream = _open(video, path)
    stream.thread_type = "AUTO"
    try:
        with container:
            best, best_t, first, first_t, end = _scan(container, stream, targets, targets[0])
            if first_t > targets[0] + PTS_EPS and targets[0] > 0:  # the seek overshot: restart
                best, best_t, first, first_t, end = _scan(container, stream, targets, 0.0)
            if first is None:
                raise VideoDecodeError(f"{path}: no decodable frames")
            if targets[-1] > end + PTS_EPS:
                raise _beyond_end(path, targets[-1], end)
            for i in np.flatnonzero(np.isneginf(best_t)):  # requests before the first frame
                best[i], best_t[i] = first, first_t
            rgb = {id(f): f.to_ndarray(format="rgb24") for f in best}  # (H, W, 3), once per frame
    except av.error.FFmpegError as e:
        raise VideoDecodeError(f"{path}: corrupt stream ({e.strerror or e})") from e
    frames = np.empty((len(req), *rgb[id(best[0])].shape), dtype=np.uint8)  # (T, H, W, 3)
    times = np.empty(len(req))
    frames[order] = np.stack([rgb[id(f)] for f in best])
    times[order] = best_t
    return frames.transpose(0, 3, 1, 2), times


def _decode_torchcodec(video: VideoInput, req: np.ndarray, path: str) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
    from torchcodec.decoders import VideoDecoder

    if not isinstance(video, bytes):
        video = os.fspath(video)
        if not os.path.isfile(video):
            raise VideoDecodeError(f"{path}: file not found")
    if (len(video) if isinstance(video, bytes) else os.path.getsize(video)) == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")
    try:
        # exact mode scans every packet once: true pts, no trust in headers
        decoder = VideoDecoder(video, seek_mode="exact", dimension_order="NCHW")
        meta = decoder.metadata
        begin, end = meta.begin_stream_seconds, meta.end_stream_seconds
        if begin is None or end is None or not meta.num_frames:
            raise VideoDecodeError(f"{path}: no video frames")
        if req.max() > end - begin + PTS_EPS:
            raise _beyond_end(path, req.max(), end - begin)
        # "played at" t = the last frame with pts <= t; a request at the very end shows the last frame
        seconds = np.minimum(begin + req, np.nextafter(end, -np.inf))
        batch = decoder.get_frames_played_at(seconds=seconds.tolist())
    except (RuntimeError, ValueError, IndexError) as e:  # torchcodec reports FFmpeg errors so
        if isinstance(e, VideoDecodeError):
            raise
        raise VideoDecodeError(f"{path}: cannot decode ({str(e).splitlines()[0]})") from e
    return batch.data, batch.pts_seconds.numpy() - begin


def decode_frames(
    video: VideoInput,
    timestamps: Sequence[float],
    *,
    backend: str = "auto",
    name: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames uint8 (T, 3, H, W) at the requested `timestamps` (seconds from the first frame, any
    order) and their true presentation times float32 (T,): for each request the last frame whose
    pts <= the requested time (the first frame for earlier times). `video` is a path or the file's
    bytes (`name` then labels errors); backend "auto" = torchcodec when it imports, else PyAV."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    req = _check_times(timestamps)
    path = _label(video, name)
    if backend == "torchcodec" or (backend == "auto" and torchcodec_available()):
        frames, times = _decode_torchcodec(video, req, path)
    else:
        frames, times = _decode_pyav(video, req, path)
    frames = torch.as_tensor(frames).contiguous()  # (T, 3, H, W)
    return frames, torch.from_numpy(np.asarray(times, dtype=np.float32))


def iter_frames(video: VideoInput, *, name: str | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Every frame in presentation order as (time in seconds from the first frame, uint8 (H, W, 3))."""
    path = _label(video, name)
    container, stream = _open(video, name)
    stream.thread_type = "AUTO"
    origin, tb = _origin(stream), stream.time_base
    try:
        with container:
            frames = (f for f in container.decode(stream) if f.pts is not None)
            yield from ((float((f.pts - origin) * tb), f.to_ndarray(format="rgb24")) for f in frames)
    except av.error.FFmpegError as e:
        raise VideoDecodeError(f"{path}: corrupt stream ({e.strerror or e})") from e


def write_video(path: str | os.PathLike, frames: torch.Tensor, fps: float) -> None:
    """Encode uint8 (T, 3, H, W) frames at a constant `fps`: libx264 where available (mpeg4 for
    .avi or without it, vp9 for .webm), yuv420p, so H and W must be even; a keyframe every second
    so that seeking is exercised."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be uint8 (T, 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
    H, W = frames.shape[-2:]
    if H % 2 or W % 2:
        raise ValueError(f"yuv420p needs even height and width, got {H}x{W}")
    rate = Fraction(fps).limit_denominator(1001)
    ext = os.path.splitext(os.fspath(path))[1].lower()
    # AVI stores no pts, so B-frames (libx264) would shift every frame's time: use mpeg4 there
    if ext == ".webm":
        codec = "libvpx-vp9"
    elif ext != ".avi" and "libx264" in av.codecs_available:
        codec = "libx264"
    else:
        codec = "mpeg4"
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.gop_size = max(1, round(fps))
        # near-lossless, so frames stay recognisable by content
        if codec != "mpeg4":
            stream.options = {"crf": "12"}
        else:
            stream.bit_rate = 8 * W * H * round(fps)
        images = frames.permute(0, 2, 3, 1).contiguous().numpy()  # (T, H, W, 3)
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
