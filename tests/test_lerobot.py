"""LeRobot v2 datasets (data/lerobot.py, `data=lerobot`): on a tiny dataset written here in that
layout, frames, timestamps and actions stay aligned, windows and the episode split are as configured,
and each broken input is named (structural ones when the source is built, per-episode ones when read,
skipped and recorded in training)."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hydra.utils import instantiate

from deltaworld.data.bad_inputs import read_bad_inputs
from deltaworld.data.clips import BadClipError
from deltaworld.data.lerobot import LeRobotClips
from deltaworld.data.video import write_video
from deltaworld.tokenizer.fit import training_data

from conftest import compose_train

FPS, SIZE = 10, 64
LENGTHS = (12, 12, 10)  # frames of episodes 0, 1, 2
CAMERAS = ("front", "wrist")
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
SPLIT = {"val_fraction": 0.34}  # of 3 episodes: episode 0 held out, 1 and 2 for training


def level(frame_index: np.ndarray) -> np.ndarray:
    """The grey level frame `frame_index` shows (17 levels apart: recognisable after encoding)."""
    return 20 + 17 * np.asarray(frame_index)


def camera_frames(camera: str, length: int) -> torch.Tensor:
    """uint8 (L, 3, SIZE, SIZE): front is grey at level(i); wrist is red at level(i), green inverse."""
    v = torch.from_numpy(level(np.arange(length))).to(torch.uint8)[:, None, None, None]
    frames = v.expand(length, 3, SIZE, SIZE).clone()
    if camera == "wrist":
        frames[:, 1], frames[:, 2] = 255 - frames[:, 1], 0
    return frames


def write_table(path: Path, episode: int, length: int, *, action_width: int = 2, drop: str | None = None) -> None:
    """An episode's parquet table; action row i = [i, episode] (padded with zeros to `action_width`)."""
    rows = np.arange(length)
    actions = np.zeros((length, action_width), np.float32)
    actions[:, :2] = np.stack([rows, np.full(length, episode)], 1)[:, :action_width]
    columns = {
        "timestamp": pa.array((rows / FPS).astype(np.float32)),
        "frame_index": pa.array(rows),
        "episode_index": pa.array(np.full(length, episode)),
        "index": pa.array(rows + sum(LENGTHS[:episode])),
        "action": pa.array(list(actions), type=pa.list_(pa.float32(), action_width)),
        "observation.state": pa.array(list(actions), type=pa.list_(pa.float32(), action_width)),
    }
    columns.pop(drop, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def episode_file(root: Path, episode: int, camera: str | None = None) -> Path:
    chunk = {"episode_chunk": 0, "episode_index": episode}
    return root / (
        DATA_PATH.format(**chunk)
        if camera is None
        else VIDEO_PATH.format(**chunk, video_key=f"observation.images.{camera}")
    )


def write_dataset(root: Path) -> Path:
    features = {
        **{
            f"observation.images.{c}": {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "c"]}
            for c in CAMERAS
        },
        "observation.state": {"dtype": "float32", "shape": [2], "names": None},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    }
    info = {
        "codebase_version": "v2.1",
        "total_episodes": len(LENGTHS),
        "chunks_size": 1000,
        "fps": FPS,
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features,
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    lines = [json.dumps({"episode_index": e, "tasks": ["reach"], "length": n}) for e, n in enumerate(LENGTHS)]
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    for episode, length in enumerate(LENGTHS):
        write_table(episode_file(root, episode), episode, length)
        for camera in CAMERAS:
            episode_file(root, episode, camera).parent.mkdir(parents=True, exist_ok=True)
            write_video(episode_file(root, episode, camera), camera_frames(camera, length), FPS)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("lerobot") / "set")


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    """A copy of the dataset to break."""
    return Path(shutil.copytree(dataset, tmp_path / "set"))


def shown_levels(frames: torch.Tensor, channel: int = 0) -> np.ndarray:
    return frames[:, channel].float().mean((-2, -1)).numpy()  # (T,)


def test_frames_actions_and_timestamps_stay_aligned(dataset):
    clips = LeRobotClips(dataset, split="train", num_frames=4, frame_step=2, stride=3, height=32, width=32, **SPLIT)
    # windows span 7 rows, starting every 3 rows: 2 in each 12- and 10-frame training episode
    assert [clips.window(i) for i in range(len(clips))] == [(1, 0), (1, 3), (2, 0), (2, 3)]
    for i in range(len(clips)):
        episode, start = clips.window(i)
        clip = clips[i]
        assert clip["frames"].shape == (4, 3, 32, 32) and clip["frames"].dtype == torch.uint8
        assert clip["actions"].dtype == torch.float32 and clip["timestamps"].dtype == torch.float32
        rows = start + 2 * np.arange(4)
        np.testing.assert_array_equal(clip["actions"].numpy(), np.stack([rows, np.full(4, episode)], 1))
        torch.testing.assert_close(clip["timestamps"], torch.arange(4) * 0.2)
        # frame t shows the frame whose index action t carries
        np.testing.assert_allclose(shown_levels(clip["frames"]), level(clip["actions"][:, 0].numpy()), atol=4)
    assert clips.action_dim == 2
    # training draws: a random window per rng, reproducible
    a, b = clips.sample_clip(np.random.default_rng(1)), clips.sample_clip(np.random.default_rng(1))
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["actions"], b["actions"])
    augmented = LeRobotClips(dataset, num_frames=4, height=32, width=32, augment=True, **SPLIT)
    c = augmented.sample_clip(np.random.default_rng(0))  # a random crop of every frame, still aligned
    assert c["frames"].shape == (4, 3, 32, 32)
    np.testing.assert_allclose(shown_levels(c["frames"]), level(c["actions"][:, 0].numpy()), atol=4)


def test_camera_selection(dataset):
    def clip(camera):
        return LeRobotClips(dataset, camera=camera, num_frames=3, height=16, width=16, **SPLIT)[0]

    front, wrist = clip(None), clip("wrist")  # the first video feature by default
    assert torch.equal(clip("observation.images.front")["frames"], front["frames"])
    np.testing.assert_allclose(shown_levels(wrist["frames"], 1), 255 - level(wrist["actions"][:, 0].numpy()), atol=4)
    np.testing.assert_allclose(shown_levels(front["frames"], 1), level(front["actions"][:, 0].numpy()), atol=4)
    with pytest.raises(ValueError, match=r"info\.json.*camera='top'.*observation\.images\.wrist"):
        clip("top")


def test_validation_holds_out_whole_episodes(dataset):
    train = LeRobotClips(dataset, split="train", num_frames=4, **SPLIT)
    val = LeRobotClips(dataset, split="val", num_frames=4, num_clips=3, **SPLIT)
    assert train.episodes == [1, 2] and val.episodes == [0]
    # 9 windows in episode 0: three of them, evenly spaced, and deterministic
    assert [val.window(i) for i in range(len(val))] == [(0, 0), (0, 4), (0, 8)]
    assert torch.equal(val[1]["frames"], val[1]["frames"])
    assert len(LeRobotClips(dataset, split="train", num_frames=4, val_fraction=0.5)) + len(
        LeRobotClips(dataset, split="val", num_frames=4, val_fraction=0.5)
    ) == sum(n - 3 for n in LENGTHS)


def test_data_lerobot_composes_and_batches(dataset, tmp_path):
    overrides = [
        "data=lerobot",
        f"data.root={dataset}",
        "frame_size=32",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.val_clips=2",
        "data.source.num_frames=4",
        "data.source.val_fraction=0.34",
    ]
    dm = instantiate(training_data(compose_train(overrides, tmp_path / "run")))
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (2, 4, 3, 32, 32) and batch["frames"].dtype == torch.uint8
    assert batch["timestamps"].shape == (2, 4) and batch["actions"].shape == (2, 4, 2)
    assert set(batch["actions"][:, 0, 1].tolist()) <= {1.0, 2.0}  # training episodes only
    (val,) = list(dm.val_dataloader())
    assert val["frames"].shape == (2, 4, 3, 32, 32) and val["actions"][:, :, 1].eq(0).all()


@pytest.mark.parametrize(
    "damage, match",
    [
        ("no_info", r"meta/info\.json: missing"),
        ("no_action_feature", r"info\.json: no 'action' feature"),
        ("v3", r"info\.json: codebase_version v3\.0"),
        ("no_episodes", r"meta/episodes\.jsonl: missing"),
        ("bad_template", r"info\.json: path template .* uses fields \['episode_index.__class__'\]"),
    ],
)
def test_structural_errors_name_the_file_when_built(copy, damage, match):
    info_path = copy / "meta/info.json"
    info = json.loads(info_path.read_text())
    if damage == "no_info":
        info_path.unlink()
    elif damage == "no_episodes":
        (copy / "meta/episodes.jsonl").unlink()
    else:
        if damage == "no_action_feature":
            del info["features"]["action"]
        elif damage == "v3":
            info["codebase_version"] = "v3.0"
        else:
            info["data_path"] = "data/{episode_index.__class__}.parquet"
        info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=match):
        LeRobotClips(copy, **SPLIT)


def damage_episode(root: Path, damage: str, episode: int) -> str:
    """Break one episode; returns the file its error must name."""
    video, table = episode_file(root, episode, "front"), episode_file(root, episode)
    length = LENGTHS[episode]
    if damage == "missing_video":
        video.unlink()
    elif damage == "short_video":
        write_video(video, camera_frames("front", length - 4), FPS)
    elif damage == "other_rate":  # as long as the table, but a frame every 2.2 rows: rows fall between frames
        write_video(video, camera_frames("front", (length - 1) * 5 // 11 + 1), FPS * 5 / 11)
    elif damage == "no_action_column":
        write_table(table, episode, length, drop="action")
    elif damage == "wide_actions":
        write_table(table, episode, length, action_width=3)
    return (video if damage in ("missing_video", "short_video", "other_rate") else table).name


@pytest.mark.parametrize(
    "damage, match",
    [
        ("missing_video", "missing video"),
        ("short_video", "lengths differ: .* 12 rows up to 1.100 s, .* 8 frames up to 0.700 s"),
        ("other_rate", "no frame within half a frame period"),
        ("no_action_column", "no 'action' column"),
        ("wide_actions", r"'action' has shape \[3\] per row, .*info\.json declares \[2\]"),
    ],
)
def test_broken_episodes_are_named_when_read(copy, damage, match):
    name = damage_episode(copy, damage, episode=1)
    clips = LeRobotClips(copy, num_frames=3, stride=4, **SPLIT)
    with pytest.raises(BadClipError, match=match) as error:
        clips[0]  # a window of episode 1
    assert "episode 1" in str(error.value) and name in str(error.value)
    assert clips.window(len(clips) - 1)[0] == 2 and clips[len(clips) - 1]["frames"].shape[0] == 3  # others read


def test_training_skips_and_records_broken_episodes(copy, tmp_path):
    damage_episode(copy, "missing_video", episode=0)  # the validation episode
    damage_episode(copy, "short_video", episode=2)
    overrides = [f"data.root={copy}", "data=lerobot", "data.num_workers=0", "data.source.num_frames=3", "frame_size=16"]
    dm = instantiate(training_data(compose_train([*overrides, "data.source.val_fraction=0.34"], tmp_path / "run")))
    dm.trainer = SimpleNamespace(default_root_dir=str(tmp_path / "run"))  # where the run lists skipped inputs
    assert list(dm.eval_set()) == []
    stream = iter(dm.train_stream({"batch_size": 2, "seed": 0}))
    episodes = {int(next(stream)["actions"][0, 1]) for _ in range(8)}
    assert episodes == {1}
    skipped = read_bad_inputs(tmp_path / "run")
    validation = [s["error"] for s in skipped if s["stage"] == "validation"]
    train = [s["error"] for s in skipped if s["stage"] == "train"]
    assert validation and all("episode 0" in e and "missing video" in e for e in validation)
    assert train and all("episode 2" in e and "lengths differ" in e for e in train)
