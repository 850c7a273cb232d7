"""Bad inputs never end a training run: corrupt videos and truncated shards are skipped in training
and in validation, counted, logged and listed in the run folder; evaluation names them and stops."""

import logging
import shutil

import pytest
from test_shards import SETTINGS, make_inputs
from test_training import FAST

from deltaworld.data.bad_inputs import BAD_INPUTS_FILE, read_bad_inputs
from deltaworld.data.clips import BadClipError, ClipSampler
from deltaworld.data.shard_stream import ClipDecoder, ShardStream
from deltaworld.data.shards import PackSettings, pack_shards
from deltaworld.data.sources import MiddleClips
from deltaworld.data.stream import SkipBadItems
from deltaworld.tokenizer.fit import run_training

from conftest import compose_train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two good shards of two samples each, and a copy of the second cut to a third of its bytes."""
    videos = make_inputs(tmp_path_factory.mktemp("videos"), good=4, bad=False)
    out = tmp_path_factory.mktemp("shards")
    pack_shards(videos, out, PackSettings(format="video", **SETTINGS))
    good = sorted(out.glob("shard-*.tar"))
    data = good[1].read_bytes()
    truncated = out / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 3])
    return good, truncated


def test_training_stream_skips_a_truncated_shard_and_lists_it(shards, tmp_path, caplog):
    good, truncated = shards
    listing = tmp_path / BAD_INPUTS_FILE
    stream = ShardStream(
        [str(good[0]), str(truncated)],
        ClipDecoder(ClipSampler(num_frames=4, height=32, width=32)),
        infinite=True,
        shuffle=False,
        limit=6,
        bad_inputs=str(listing),
    )
    with caplog.at_level(logging.WARNING):
        clips = list(stream)  # epochs go on past the truncated shard
    assert len(clips) == 6
    skipped = read_bad_inputs(tmp_path)
    assert skipped and all("truncated.tar" in s["error"] for s in skipped)
    assert any("unreadable shard" in s["error"] for s in skipped)
    assert "skipped bad input" in caplog.text


def test_evaluation_stream_names_the_truncated_shard(shards):
    good, truncated = shards
    stream = ShardStream(
        [str(good[0]), str(truncated)],
        ClipDecoder(ClipSampler(num_frames=4, height=32, width=32), eval=True),
        infinite=False,
    )
    with pytest.raises(BadClipError, match="truncated.tar"):
        list(stream)


def test_validation_set_skips_a_corrupt_video(tmp_path):
    (tmp_path / "videos").mkdir()
    videos = make_inputs(tmp_path / "videos", good=3, bad=False)
    clips = MiddleClips(videos, num_clips=3, num_frames=4, height=16, width=16, stride=0.3)
    clips.files[1].write_bytes(b"broken")
    items = list(SkipBadItems(clips, bad_inputs=str(tmp_path / BAD_INPUTS_FILE)))
    assert len(items) == 2
    (skipped,) = read_bad_inputs(tmp_path)
    assert clips.files[1].name in skipped["error"] and skipped["stage"] == "validation"
    with pytest.raises(RuntimeError, match=clips.files[1].name):  # evaluation reads the set itself
        clips[1]


@pytest.mark.parametrize("data", ["video_folder", "shards"])
def test_training_with_bad_inputs_runs_through_validation(tmp_path, shards, data):
    if data == "video_folder":
        (tmp_path / "videos").mkdir()
        root = make_inputs(tmp_path / "videos", good=2, bad=False)
        (root / "zzz_corrupt.mp4").write_bytes(b"\x00" * 500)  # the last file: MiddleClips picks it
        extra, bad_name = ["data.val_clips=3", "data.num_workers=0"], "zzz_corrupt.mp4"
    else:
        good, truncated = shards
        root = tmp_path / "shards"
        root.mkdir()
        for path in (good[0], truncated):
            shutil.copy(path, root / path.name)
        root = f"{root / truncated.name}::{root / good[0].name}"  # validation reads the truncated one first
        extra, bad_name = ["data.num_workers=0"], "truncated.tar"
    overrides = [
        *FAST,
        f"data={data}",
        f"data.root={root}",
        "data.source.num_frames=3",
        "trainer.max_steps=2",
        "trainer.val_check_interval=1",
        *extra,
    ]
    export = run_training(compose_train(overrides, tmp_path / "run"))
    assert export.is_file()
    skipped = read_bad_inputs(tmp_path / "run")
    assert skipped and all(bad_name in s["error"] for s in skipped)
    assert "validation" in {s["stage"] for s in skipped}
