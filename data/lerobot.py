"""Robot episodes in the LeRobot v2 layout (v2.0 / v2.1) from a local folder, as action clips.

The folder holds `meta/info.json` (fps, `features`, the `data_path` / `video_path` templates,
`chunks_size`), `meta/episodes.jsonl` (one line per episode: `episode_index`, `length`), one parquet
table per episode (a row per frame: `timestamp` in seconds from the episode's start, `action`, ...)
and one mp4 per episode and camera (a feature of dtype "video", e.g. `observation.images.front`).

A clip is a window of `num_frames` rows (`frame_step` rows apart) of one episode: {"frames" uint8
(T, 3, H, W), "timestamps" float32 (T,) seconds from the clip's first row, "actions" float32 (T, A)}.
Frames are decoded at the rows' own timestamps and must lie within half a frame period of them, so
frame t always shows what the robot saw when it took action t. Validation holds out whole episodes.

Errors follow the other file sources: a folder that is not a dataset (no info.json, no action or
video feature, no episodes.jsonl) is a ValueError naming the file when the source is built; a broken
episode (missing table or video, lengths that disagree, a missing or misshapen action column) is a
BadClipError naming the episode and the file when one of its clips is read, which training skips and
records (data.stream). The metadata is data: the path templates may use only their documented fields.
"""

import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from deltaworld.data.clips import BadClipError, ClipSampler, resize_center_crop
from deltaworld.data.media import probe_media
from deltaworld.data.video import PTS_EPS, VideoDecodeError, decode_frames

log = logging.getLogger(__name__)

INFO_FILE, EPISODES_FILE = "meta/info.json", "meta/episodes.jsonl"
SPLITS = ("train", "val")


def _fill(template: str, fields: dict, info: Path) -> str:
    """`template` with `fields` filled in; any other field (or attribute/index access) is refused."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        unknown = [name for name in names if name not in fields]
        if not unknown:
            return template.format(**fields)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{info}: malformed path template {template!r} ({e})") from e
    raise ValueError(f"{info}: path template {template!r} uses fields {unknown}; allowed: {sorted(fields)}")


def select_camera(features: dict, camera: str | None, info: Path) -> str:
    """The video feature named `camera` (its full key or its last dotted part); None: the first."""
    videos = [key for key, spec in features.items() if isinstance(spec, dict) and spec.get("dtype") == "video"]
    if not videos:
        raise ValueError(f"{info}: no video feature (dtype 'video'); features: {sorted(features)}")
    if camera is None:
        return videos[0]
    matches = [key for key in videos if key == camera or key.endswith(f".{camera}")]
    if len(matches) != 1:
        problem = "no" if not matches else f"several ({matches})"
        raise ValueError(f"{info}: {problem} video feature matches camera={camera!r}; cameras: {videos}")
    return matches[0]


@dataclass(frozen=True)
class LeRobotInfo:
    """What meta/info.json says about the chosen camera and action."""

    path: Path  # the info.json, named by errors
    fps: float
    chunks_size: int
    data_path: str  # path templates, relative to the dataset root
    video_path: str
    action_dim: int
    camera: str  # the video feature's full key


def read_info(path: Path, *, action_key: str = "action", camera: str | None = None) -> LeRobotInfo:
    """meta/info.json checked for what clips need; anything missing is a ValueError naming the file."""
    if not path.is_file():
        raise ValueError(f"{path}: missing ({path.parent.parent} is not a LeRobot v2 dataset folder)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON ({e})") from e
    version = str(info.get("codebase_version", "v2"))
    if not version.startswith("v2"):
        raise ValueError(f"{path}: codebase_version {version}; only v2 (a file per episode) is read")
    features = info.get("features")
    if not isinstance(features, dict):
        raise ValueError(f"{path}: no 'features' dict")
    action = features.get(action_key)
    if not isinstance(action, dict):
        raise ValueError(f"{path}: no '{action_key}' feature; features: {sorted(features)}")
    shape = action.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) and shape[0] > 0):
        raise ValueError(f"{path}: '{action_key}' must have a shape [A], got {shape}")
    fps, chunks = info.get("fps"), info.get("chunks_size", 1000)
    if not isinstance(fps, int | float) or fps <= 0 or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"{path}: need fps > 0 and an integer chunks_size >= 1, got {fps}, {chunks}")
    templates = {key: info.get(key) for key in ("data_path", "video_path")}
    if not all(isinstance(t, str) for t in templates.values()):
        raise ValueError(f"{path}: data_path and video_path must be path templates, got {templates}")
    return LeRobotInfo(
        path=path,
        fps=float(fps),
        chunks_size=chunks,
        data_path=templates["data_path"],
        video_path=templates["video_path"],
        action_dim=shape[0],
        camera=select_camera(features, camera, path),
    )


def read_episodes(path: Path) -> dict[int, int]:
    """Episode index -> number of frames, from meta/episodes.jsonl."""
    if not path.is_file():
        raise ValueError(f"{path}: missing (a LeRobot v2 dataset lists its episodes there)")
    episodes = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            index, length = entry["episode_index"], entry["length"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} line {number}: not an episode entry with episode_index and length ({e})") from e
        if not isinstance(index, int) or not isinstance(length, int) or index < 0 or length < 0:
            raise ValueError(f"{path} line {number}: episode_index and length must be integers >= 0, got {entry}")
        episodes[index] = length
    if not episodes:
        raise ValueError(f"{path}: no episodes")
    return dict(sorted(episodes.items()))


def split_episodes(episodes: list[int], split: str, val_fraction: float) -> list[int]:
    """The episodes of `split`: validation holds out round(val_fraction * n) episodes (at least one,
    never all) evenly spaced over the sorted indices, so both splits span the whole recording."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(episodes)
    if n < 2:
        raise ValueError(f"{n} episode(s): a train/val split by episode needs at least 2")
    num_val = min(max(round(val_fraction * n), 1), n - 1)
    held_out = {episodes[i] for i in np.linspace(0, n - 1, num_val).round().astype(int)}
    return [e for e in episodes if (e in held_out) == (split == "val")]


class LeRobotClips(Dataset):
    """Windows of `num_frames` rows (`frame_step` apart; windows start `stride` rows apart) of the
    episodes of one split. Map-style for validation (`num_clips`: that many windows, evenly spaced;
    None: all) and a clip source for training (`sample_clip`: a uniformly random window, cropped at
    random when `augment`; never flipped, which would mirror the scene but not the actions)."""

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "train",
        camera: str | None = None,
        action_key: str = "action",
        num_frames: int = 8,
        frame_step: int = 1,
        stride: int = 1,
        height: int = 64,
        width: int = 64,
        val_fraction: float = 0.1,
        num_clips: int | None = None,
        augment: bool = False,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio_jitter: float = 4 / 3,
    ) -> None:
        if num_frames < 1 or frame_step < 1 or stride < 1:
            raise ValueError(f"need num_frames, frame_step and stride >= 1; got {num_frames}, {frame_step}, {stride}")
        self.root = Path(root)
        self.meta = read_info(self.root / INFO_FILE, action_key=action_key, camera=camera)
        self.action_dim, self.camera, self.action_key = self.meta.action_dim, self.meta.camera, action_key
        self.paths(0)  # a bad template is refused now, not at the first read

        lengths = read_episodes(self.root / EPISODES_FILE)
        self.episodes = split_episodes(list(lengths), split, val_fraction)
        self.split, self.num_frames, self.frame_step, self.stride = split, num_frames, frame_step, stride
        span = (num_frames - 1) * frame_step + 1  # rows a window covers
        counts = np.array([max(0, (lengths[e] - span) // stride + 1) for e in self.episodes])
        if counts.sum() == 0:
            raise ValueError(f"{self.root}: no {split} episode has the {span} frames a clip spans")
        if short := int((counts == 0).sum()):
            log.info("%s: %d %s episodes are shorter than a clip (%d frames) and unused", self.root, short, split, span)
        self.lengths = {e: lengths[e] for e in self.episodes}
        self._ends = np.cumsum(counts)  # window i is in the first episode whose end exceeds i
        total = int(self._ends[-1])
        self._picks = None  # all windows
        if num_clips is not None:
            self._picks = np.unique(np.linspace(0, total - 1, min(num_clips, total)).round().astype(int))
        self.sampler = ClipSampler(
            height=height, width=width, augment=augment, scale=tuple(scale), ratio_jitter=ratio_jitter, hflip=False
        )
        self._checked: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # episode -> checked (timestamps, actions)

    def paths(self, episode: int) -> tuple[Path, Path]:
        """(parquet table, camera video) of an episode."""
        meta = self.meta
        chunk = {"episode_chunk": episode // meta.chunks_size, "episode_index": episode}
        table = _fill(meta.data_path, chunk, meta.path)
        video = _fill(meta.video_path, {**chunk, "video_key": meta.camera}, meta.path)
        return self.root / table, self.root / video

    def __len__(self) -> int:
        return int(self._ends[-1]) if self._picks is None else len(self._picks)

    def window(self, index: int) -> tuple[int, int]:
        """(episode, first row) of window `index`."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        flat = index if self._picks is None else int(self._picks[index])
        slot = int(np.searchsorted(self._ends, flat, side="right"))
        before = int(self._ends[slot - 1]) if slot else 0
        return self.episodes[slot], (flat - before) * self.stride

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.read(*self.window(index))

    def sample_clip(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self.read(*self.window(int(rng.integers(len(self)))), rng=rng)

    def read(self, episode: int, start: int, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """The clip of `episode` from row `start`: centre-cropped, or augmented with `rng` when set
        and `augment` is on. A broken episode raises BadClipError naming it and the file."""
        timestamps, actions = self.episode(episode)
        rows = start + self.frame_step * np.arange(self.num_frames)
        times = timestamps[rows]  # (T,)
        video = self.paths(episode)[1]
        tolerance = 0.5 / self.meta.fps
        try:
            # the last frame shown by time + half a period: the nearest one on a constant-rate stream
            frames, shown = decode_frames(video, times + tolerance)  # (T, 3, H, W), (T,)
        except VideoDecodeError as e:
            raise BadClipError(f"episode {episode}: {e}") from e
        off = np.abs(shown.numpy() - times)
        if (bad := np.flatnonzero(off > tolerance + PTS_EPS)).size:
            r = bad[0]
            raise BadClipError(
                f"episode {episode}: {video}: no frame within half a frame period ({tolerance:.4f} s) of row "
                f"{rows[r]}'s timestamp {times[r]:.4f} s (the frame found: {shown[r]:.4f} s)"
            )
        if rng is None:  # the evaluation clip: no randomness
            frames = resize_center_crop(frames, self.sampler.height, self.sampler.width)
        else:
            frames = self.sampler.transform(frames, rng)
        return {
            "frames": frames,
            "timestamps": torch.from_numpy((times - times[0]).astype(np.float32)),
            "actions": torch.from_numpy(actions[rows]),
        }

    def episode(self, episode: int) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps float64 (L,) and actions float32 (L, A) of a checked episode: its table has the
        listed length, an action column of width A, and its video lasts as long as its rows."""
        if episode in self._checked:
            return self._checked[episode]
        try:  # only this source needs pyarrow: deltaworld.data imports without it
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError("reading LeRobot tables needs pyarrow: pip install -e '.[lerobot]'") from e

        table_path, video = self.paths(episode)
        name = f"episode {episode}: {table_path}"
        if not table_path.is_file():
            raise BadClipError(f"{name}: missing table")
        columns = ["timestamp", self.action_key]
        try:
            present = pq.read_schema(table_path).names
            for column in columns:
                if column not in present:
                    raise BadClipError(f"{name}: no '{column}' column; columns: {present}")
            table = pq.read_table(table_path, columns=columns)  # not the other columns: they may be large
        except (OSError, pa.ArrowException) as e:
            raise BadClipError(f"{name}: unreadable table ({e})") from e
        try:
            timestamps = table.column("timestamp").to_numpy().astype(np.float64)  # (L,)
        except (ValueError, TypeError, pa.ArrowException) as e:
            raise BadClipError(f"{name}: 'timestamp' is not one number per row ({e})") from e
        expected = self.lengths[episode]
        if len(timestamps) != expected:
            raise BadClipError(f"{name}: {len(timestamps)} rows, {self.root / EPISODES_FILE} lists {expected}")
        try:
            actions = np.stack(table.column(self.action_key).to_numpy(zero_copy_only=False)).astype(np.float32)
        except (ValueError, TypeError) as e:  # rows of differing widths, or nulls
            raise BadClipError(f"{name}: '{self.action_key}' is not a list of {self.action_dim} floats per row") from e
        if actions.shape != (expected, self.action_dim):
            raise BadClipError(
                f"{name}: '{self.action_key}' has shape {list(actions.shape[1:])} per row, "
                f"{self.meta.path} declares [{self.action_dim}]"
            )
        if not video.is_file():
            raise BadClipError(f"episode {episode}: missing video {video} (camera {self.camera})")
        try:
            info = probe_media(video)
        except VideoDecodeError as e:
            raise BadClipError(f"episode {episode}: {e}") from e
        if abs(info.last - timestamps[-1]) > 0.5 / self.meta.fps + PTS_EPS:
            raise BadClipError(
                f"episode {episode}: lengths differ: {table_path} has {expected} rows up to {timestamps[-1]:.3f} s, "
                f"{video} has {info.num_frames} frames up to {info.last:.3f} s"
            )
        self._checked[episode] = timestamps, actions
        return timestamps, actions
