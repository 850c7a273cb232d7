"""Packing a folder tree of videos into webdataset tar shards, resumably.

Inputs (video files, and folders of frames when `frame_fps` is set) are sorted and cut into fixed
groups of `samples_per_shard`: shard i always holds inputs [i*n, (i+1)*n), so a re-run skips every
shard whose record `shard-NNNNNN.json` exists (written after its tar is renamed into place) and
rebuilds only the rest. One sample per input, keyed by its index:

    format "video": the file's own bytes under its extension (e.g. "mp4"), no re-encoding
    format "jpeg":  every frame as "NNNNNN.jpg" (short side resized to `short_side`), times in the json
    both:           "json" {source, fps, duration, last, num_frames, width, height, timestamps?}

Folders of frames are stored as their own image files in both formats. Corrupt, unreadable and
too-short inputs are skipped and listed with the reason in `manifest.json`.
"""

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from tqdm.auto import tqdm

from deltaworld.data.clips import resize_short_side
from deltaworld.data.media import (
    VIDEO_EXTENSIONS,
    FrameSequence,
    find_media,
    open_media,
    probe_media,
    read_media,
)
from deltaworld.data.video import VideoDecodeError, iter_frames
from deltaworld.tokenizer.checkpoint import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

FORMATS = ("video", "jpeg")
MANIFEST = "manifest.json"
SETTINGS = "settings.json"


@dataclass(frozen=True)
class PackSettings:
    format: str = "video"
    samples_per_shard: int = 100
    min_frames: int = 8  # fewer frames than one clip: skipped
    min_duration: float = 0.28  # seconds from first to last frame: an 8-frame clip at 1/25 s gaps
    frame_fps: float | None = None  # include folders of frames, shown at this rate
    short_side: int | None = 256  # jpeg format: frames resized so; None keeps the source size
    quality: int = 90  # jpeg format
    extensions: tuple[str, ...] = field(default=VIDEO_EXTENSIONS)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _check_length(name: str, info, settings: PackSettings) -> None:
    if info.num_frames < settings.min_frames or info.last < settings.min_duration:
        raise VideoDecodeError(
            f"{name}: too short ({info.num_frames} frames over {info.last:.2f} s; need "
            f">= {settings.min_frames} frames over >= {settings.min_duration:.2f} s)"
        )


def _encoded_frames(path: Path, settings: PackSettings) -> tuple[list[bytes], list[float]]:
    """Every frame of a video as JPEG bytes (short side resized) and its time."""
    images, times = [], []
    for t, rgb in iter_frames(path):  # (H, W, 3)
        if settings.short_side:
            rgb = resize_short_side(torch.from_numpy(rgb).permute(2, 0, 1)[None], settings.short_side, max_aspect=1e9)
            rgb = rgb[0].permute(1, 2, 0).numpy()
        images.append(_jpeg(rgb, settings.quality))
        times.append(t)
    return images, times


def pack_sample(path: Path, root: Path, settings: PackSettings) -> dict:
    """The sample of one input (without __key__); VideoDecodeError names the file when it is bad."""
    media = open_media(path, frame_fps=settings.frame_fps)
    info = probe_media(media)
    _check_length(str(path), info, settings)
    meta = {
        "source": str(path.relative_to(root)),
        "fps": info.fps,
        "last": info.last,
        "duration": info.last + 1 / info.fps,
        "num_frames": info.num_frames,
        "width": info.width,
        "height": info.height,
    }
    if isinstance(media, FrameSequence):
        sample = {f"{i:06d}{Path(p).suffix.lower()}": Path(p).read_bytes() for i, p in enumerate(media.frames)}
        meta["timestamps"] = media.timestamps.tolist()
    elif settings.format == "video":
        read_media(media, [0.0, info.last])  # decodable from end to end, not only demuxable
        sample = {path.suffix.lower().lstrip("."): path.read_bytes()}
    else:
        images, times = _encoded_frames(path, settings)
        sample = {f"{i:06d}.jpg": image for i, image in enumerate(images)}
        meta["timestamps"], meta["num_frames"] = times, len(times)
    return {**sample, "json": meta}


def pack_shard(index: int, inputs: Sequence[Path], first: int, root: Path, out: Path, settings: PackSettings) -> dict:
    """Write shard `index` (inputs numbered from `first`) atomically; returns its record."""
    name = f"shard-{index:06d}.tar"
    bad, samples = [], 0
    with atomic_write(out / name) as f, wds.TarWriter(f) as sink:
        for offset, path in enumerate(inputs):
            try:
                sample = pack_sample(path, root, settings)
            except (VideoDecodeError, OSError, ValueError) as e:
                bad.append({"path": str(path), "reason": str(e)})
                continue
            sink.write({"__key__": f"{first + offset:09d}", **sample})
            samples += 1
    record = {"file": name, "samples": samples, "bytes": (out / name).stat().st_size, "inputs": len(inputs), "bad": bad}
    atomic_write_json(out / f"shard-{index:06d}.json", record)
    return record


def _pack_shard_job(args: tuple) -> dict:
    return pack_shard(*args)


def pack_shards(
    input_dir: str | os.PathLike, output_dir: str | os.PathLike, settings: PackSettings, *, workers: int = 0
) -> dict:
    """Pack every input under `input_dir` into shards in `output_dir` (resumable); returns the
    manifest, also written to `output_dir/manifest.json`."""
    if settings.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {settings.format!r}")
    root, out = Path(input_dir), Path(output_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {root} does not exist")
    inputs = find_media(root, extensions=settings.extensions, frame_fps=settings.frame_fps)
    if not inputs:
        raise FileNotFoundError(f"no videos ({', '.join(settings.extensions)}) under {root}")
    out.mkdir(parents=True, exist_ok=True)
    # a resumed run must pack the same inputs the same way, or shards would mix two layouts
    listing = "\n".join(str(p.relative_to(root)) for p in inputs)
    fingerprint = {
        "settings": json.loads(json.dumps(asdict(settings))),  # tuples as lists, as stored
        "inputs": hashlib.sha256(listing.encode()).hexdigest()[:16],
        "num_inputs": len(inputs),
    }
    if (out / SETTINGS).is_file():
        stored = json.loads((out / SETTINGS).read_text())
        if stored != fingerprint:
            differing = sorted(k for k in stored.keys() | fingerprint.keys() if stored.get(k) != fingerprint.get(k))
            raise ValueError(
                f"{out} holds shards packed differently ({', '.join(differing)} differ); "
                "use another output folder or delete it"
            )
    else:
        atomic_write_json(out / SETTINGS, fingerprint)

    n = settings.samples_per_shard
    jobs = [(i, inputs[s : s + n], s, root, out, settings) for i, s in enumerate(range(0, len(inputs), n))]
    pending = [job for job in jobs if not (out / f"shard-{job[0]:06d}.json").is_file()]
    log.info(
        "%d inputs, %d shards: %d done, %d to pack", len(inputs), len(jobs), len(jobs) - len(pending), len(pending)
    )
    with tqdm(total=sum(len(j[1]) for j in pending), desc="packing", unit="video") as bar:
        if workers > 0:
            with ProcessPoolExecutor(workers) as pool:
                for record in pool.map(_pack_shard_job, pending):
                    bar.update(record["inputs"])
        else:
            for job in pending:
                bar.update(pack_shard(*job)["inputs"])
    return write_manifest(out, len(jobs), settings)


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: packing unfinished? re-run `deltaworld shards` to complete it")
    return json.loads(path.read_text())


def write_manifest(out: Path, num_shards: int, settings: PackSettings) -> dict:
    records = [json.loads((out / f"shard-{i:06d}.json").read_text()) for i in range(num_shards)]
    samples = sum(r["samples"] for r in records)
    total = sum(r["bytes"] for r in records)
    manifest = {
        "format": settings.format,
        "settings": json.loads(json.dumps(asdict(settings))),  # as read back: tuples become lists
        "urls": f"shard-{{000000..{num_shards - 1:06d}}}.tar",
        "num_shards": num_shards,
        "num_samples": samples,
        "bytes": total,
        "bytes_per_sample": total / max(samples, 1),
        "shards": [{k: r[k] for k in ("file", "samples", "bytes")} for r in records],
        "bad": [b for r in records for b in r["bad"]],
    }
    atomic_write_json(out / MANIFEST, manifest)
    if manifest["bad"]:
        log.warning("%d bad inputs skipped (listed in %s)", len(manifest["bad"]), out / MANIFEST)
    return manifest
