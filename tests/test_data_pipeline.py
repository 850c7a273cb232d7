"""Decoder agreement (torchcodec vs PyAV), clip sampling and augmentation, bad inputs per kind,
frame folders, and the data config group."""

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from test_benchmarks_data import make_vspw
from test_data import FPS, frame_index, grey_frames
from test_shards import make_inputs

from deltaworld.data.clips import (
    BadClipError,
    ClipSampler,
    middle_clip_times,
    random_clip_times,
    random_crop_box,
)
from deltaworld.data.media import FrameSequence, read_media
from deltaworld.data.sources import LabelledClipSource, MiddleClips, VideoFolderSource
from deltaworld.data.stream import ClipStream
from deltaworld.data.video import decode_frames, torchcodec_available, write_video
from deltaworld.tokenizer.fit import training_data

from conftest import compose_train

VFR_TICKS = [0, 2, 9, 10, 21, 30, 31, 42]  # frame i of vfr.mkv is shown at VFR_TICKS[i] / 30 s


def write_vfr(path, ticks: list[int]) -> None:
    """mkv with frame i (grey level of grey_frames) shown at ticks[i] / 30 s: irregular gaps."""
    frames = grey_frames(len(ticks), 32, 32).permute(0, 2, 3, 1).numpy()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for image, tick in zip(frames, ticks, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = tick, Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for ext in (".mp4", ".mkv", ".avi", ".webm"):  # mp4/mkv: libx264 with B-frames
        write_video(root / f"grey{ext}", grey_frames(20), FPS)
    write_vfr(root / "vfr.mkv", VFR_TICKS)
    return root


@pytest.mark.skipif(not torchcodec_available(), reason="torchcodec (with FFmpeg libraries) not importable")
@pytest.mark.parametrize("name", ["grey.mp4", "grey.mkv", "grey.avi", "grey.webm", "vfr.mkv"])
def test_torchcodec_and_pyav_return_the_same_frames(videos, name):
    requests = [0.31, 0.0, 1.25, 0.05, 0.99, 1.39, 0.7, 0.31]
    a_frames, a_times = decode_frames(videos / name, requests, backend="pyav")
    b_frames, b_times = decode_frames((videos / name).read_bytes(), requests, backend="torchcodec")
    torch.testing.assert_close(a_times, b_times, atol=1e-4, rtol=0)
    assert torch.equal(frame_index(a_frames), frame_index(b_frames))
    assert (a_frames.float() - b_frames.float()).abs().max() <= 2  # colour conversion rounding only


def test_variable_frame_rate_true_times(videos):
    frames, times = decode_frames(videos / "vfr.mkv", [0.2, 0.31, 1.02, 1.3], backend="pyav")
    assert frame_index(frames).tolist() == [1, 2, 5, 6]
    torch.testing.assert_close(times, torch.tensor([2, 9, 30, 31]) / 30, atol=1e-3, rtol=0)  # mkv: ms pts


def test_frame_folder_reads_like_the_video(tmp_path, videos):
    for i, image in enumerate(grey_frames(20)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / f"{i:05d}.png")
    seq = FrameSequence.from_folder(tmp_path, FPS)
    requests = [0.95, 0.0, 1.25, 1.95]
    frames, times = read_media(seq, requests)
    v_frames, v_times = read_media(videos / "grey.mp4", requests)
    assert torch.equal(frame_index(frames), frame_index(v_frames))
    torch.testing.assert_close(times, v_times, atol=1e-4, rtol=0)


def test_clip_times_paper_gaps_random_start_and_middle():
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(300):
        t = random_clip_times(rng, 10.0, 8, 1 / 25, 1 / 3)
        gaps = np.diff(t)
        assert gaps.min() >= 1 / 25 and gaps.max() <= 1 / 3 and t[0] >= 0 and t[-1] <= 10.0
        starts.append(t[0])
    assert np.std(starts) > 1.5  # spread over the whole video, not pinned to its start
    np.testing.assert_allclose(middle_clip_times(4.0, 5, 0.5), [1.0, 1.5, 2.0, 2.5, 3.0])
    with pytest.raises(BadClipError, match="clip.mp4: too short"):
        middle_clip_times(1.0, 7, 0.2, name="clip.mp4")


def test_random_crop_box_scale_and_aspect():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_crop_box(rng, 90, 160, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 90 and 0 <= left and left + w <= 160
        if (h, w) != (90, 120):  # the fallback box
            assert 0.58 <= h * w / (90 * 160) <= 1.0 and 3 / 4 - 0.03 <= w / h <= 4 / 3 + 0.03


def test_augmentation_is_identical_across_the_clip():
    image = torch.randint(0, 256, (1, 3, 40, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    clip = image.expand(5, -1, -1, -1)
    sampler = ClipSampler(height=24, width=24, augment=True)
    outputs = [sampler.transform(clip, np.random.default_rng(seed)) for seed in range(20)]
    for out in outputs:
        assert out.shape == (5, 3, 24, 24) and (out == out[:1]).all()  # one crop, one flip for all frames
    assert len({out[0].sum().item() for out in outputs}) > 10  # but different crops per clip
    plain = ClipSampler(height=24, width=24).transform(clip, np.random.default_rng(0))
    assert torch.equal(plain, ClipSampler(height=24, width=24).transform(clip, np.random.default_rng(1)))


@pytest.mark.parametrize("kind", ["zero.mp4", "truncated.mp4", "text.mkv", "short.mp4", "frames_bad"])
def test_training_source_rejects_each_bad_input_naming_it(tmp_path, kind):
    make_inputs(tmp_path, good=1)
    source = VideoFolderSource(tmp_path, num_frames=8, min_gap=0.2, max_gap=0.25, frame_fps=FPS)
    source.files = [tmp_path / kind]
    with pytest.raises(BadClipError, match=kind):
        source.sample_clip(np.random.default_rng(0))


def test_training_stream_skips_bad_inputs(tmp_path, caplog):
    make_inputs(tmp_path, good=2)
    source = VideoFolderSource(tmp_path, num_frames=4, height=16, width=16, min_gap=0.1, max_gap=0.2, frame_fps=FPS)
    stream = iter(ClipStream(source, batch_size=2, seed=0))
    clips = [next(stream) for _ in range(6)]
    assert all(c["frames"].shape == (4, 3, 16, 16) for c in clips)
    assert "skipped bad input" in caplog.text


def test_middle_clips_are_deterministic_and_errors_name_the_file(tmp_path):
    make_inputs(tmp_path, good=3, bad=False)
    clips = MiddleClips(tmp_path, num_clips=2, num_frames=4, height=16, width=16, stride=0.3)
    assert len(clips) == 2
    assert frame_index(clips[0]["frames"]).tolist() == [5, 8, 11, 14]
    assert torch.equal(clips[1]["frames"], clips[1]["frames"])
    clips.files[1].write_bytes(b"broken")
    with pytest.raises(RuntimeError, match=clips.files[1].name):
        clips[1]


def test_data_group_composes(tmp_path):
    (tmp_path / "vspw").mkdir()
    make_vspw(tmp_path / "vspw")
    (tmp_path / "videos").mkdir()
    make_inputs(tmp_path / "videos", good=2, bad=False)
    for overrides in (
        ["data=vspw", f"data.root={tmp_path / 'vspw'}", "frame_size=16"],
        ["data=video_folder", f"data.root={tmp_path / 'videos'}", "frame_size=16", "data.source.num_frames=4"],
    ):
        cfg = compose_train(overrides, tmp_path / "run")
        dm = instantiate(training_data(cfg))
        clip = dm.source.sample_clip(np.random.default_rng(0))
        assert clip["frames"].shape[-2:] == (16, 16)
        assert next(iter(dm.eval_set()))["frames"].shape[-2:] == (16, 16)
    assert isinstance(dm.source, VideoFolderSource)
    vspw = compose_train(["data=vspw", f"data.root={tmp_path / 'vspw'}", "frame_size=16"], tmp_path / "run")
    assert len(instantiate(vspw.data.benchmark.eval)) == 4 and len(instantiate(vspw.data.benchmark.train)) == 2
    assert isinstance(instantiate(training_data(vspw)).source, LabelledClipSource)
