"""Synthetic clips, timestamped video decoding and clip sources (all fixtures made here)."""

from dataclasses import fields

import numpy as np
import pytest
import torch

from deltaworld.data.sources import BadClipError, ClipSource, SyntheticSource, VideoFolderSource, sample_gaps
from deltaworld.data.synthetic import Scene, object_centres, render_clip, render_scene, sample_events, sample_scene
from deltaworld.data.video import VideoDecodeError, decode_frames, probe_video, write_video

FPS = 10
LEVEL0, STEP = 8, 12  # frame i is the constant grey LEVEL0 + STEP * i, so content names the frame


def grey_frames(n: int, height: int = 32, width: int = 32) -> torch.Tensor:
    levels = LEVEL0 + STEP * torch.arange(n, dtype=torch.int32)
    return levels.view(n, 1, 1, 1).expand(n, 3, height, width).to(torch.uint8).contiguous()


def frame_index(frames: torch.Tensor) -> torch.Tensor:
    """Inverse of grey_frames for (T, 3, H, W), robust to compression error."""
    return ((frames.float().mean((1, 2, 3)) - LEVEL0) / STEP).round().long()


@pytest.fixture(scope="module")
def grey_video(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("video") / "grey.mp4"
    write_video(path, grey_frames(20), FPS)  # 2 s, keyframes at 0 s and 1 s
    return str(path)


# --- synthetic ---------------------------------------------------------------------------------


def test_render_clip_deterministic_by_seed():
    a, b = render_clip(np.random.default_rng(7)), render_clip(np.random.default_rng(7))
    c = render_clip(np.random.default_rng(8))
    assert a.keys() == b.keys() == {"frames", "timestamps", "segmentation", "depth"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["frames"], c["frames"])
    assert not torch.equal(a["timestamps"], c["timestamps"])


@pytest.mark.parametrize("shape", [(8, 64, 64), (5, 48, 80)])
def test_render_clip_shapes_and_ranges(shape):
    T, H, W = shape
    for seed in range(5):
        clip = render_clip(np.random.default_rng(seed), num_frames=T, height=H, width=W, num_classes=5)
        assert clip["frames"].shape == (T, 3, H, W) and clip["frames"].dtype == torch.uint8
        assert clip["timestamps"].shape == (T,) and clip["timestamps"].dtype == torch.float32
        assert clip["segmentation"].shape == (T, H, W) and clip["segmentation"].dtype == torch.int64
        assert clip["depth"].shape == (T, H, W) and clip["depth"].dtype == torch.float32
        assert clip["timestamps"][0] == 0
        seg = clip["segmentation"]
        assert seg.min() >= 0 and seg.max() < 5
        assert (seg == 0).any() and (seg > 0).any()
        assert (clip["depth"] > 0).all()
        assert clip["frames"].float().std() > 10  # textured, not flat


def test_gaps_within_bounds():
    rng = np.random.default_rng(0)
    ts = sample_gaps(rng, 1000, 0.05, 0.2)
    gaps = np.diff(ts)
    assert ts[0] == 0 and gaps.min() >= 0.05 and gaps.max() <= 0.2 and gaps.std() > 0.03
    clip = render_clip(rng, num_frames=50, min_gap=0.1, max_gap=0.15)
    gaps = clip["timestamps"].diff()
    assert gaps.min() >= 0.1 - 1e-6 and gaps.max() <= 0.15 + 1e-6
    with pytest.raises(ValueError):
        sample_gaps(rng, 4, 0.3, 0.1)


def test_object_speed_sets_how_far_objects_move():
    def object_travel(speed: tuple[float, float]) -> float:
        clip = render_clip(np.random.default_rng(5), num_frames=2, min_gap=0.5, max_gap=0.5, object_speed=speed)
        return (clip["segmentation"][0] != clip["segmentation"][1]).float().mean().item()

    assert object_travel((0.0, 0.0)) == 0  # the background pans, but its class does not change
    assert 0 < object_travel((0.05, 0.1)) < object_travel((0.3, 0.6))
    with pytest.raises(ValueError, match="object_speed"):
        render_clip(np.random.default_rng(0), object_speed=(0.5, 0.1))


def test_segmentation_and_depth_agree_with_scene():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng, height=48, width=48, num_classes=4, num_shapes=5)
        clip = render_scene(scene, sample_gaps(rng, 6, 0.1, 0.3))
        seg, depth = clip["segmentation"].numpy(), clip["depth"].numpy()
        assert depth[seg == 0].min() > scene.obj_depth.max()  # background lies behind every object
        # a labelled pixel carries the depth of an object of its class
        for c in np.unique(seg[seg > 0]):
            class_depths = scene.obj_depth[scene.obj_class == c].astype(np.float32)
            assert np.isin(depth[seg == c], class_depths).all()


def _two_discs(depth_a: float, depth_b: float) -> Scene:
    """Class 1 and class 4 (both discs) at the same place, standing still, camera still."""
    scene = sample_scene(np.random.default_rng(0), height=32, width=32, num_classes=5, num_shapes=2)
    scene.cam_vel = np.zeros(2)
    scene.obj_class = np.array([1, 4])
    scene.obj_pos = np.array([[16.0, 16.0], [18.0, 16.0]])
    scene.obj_vel = np.zeros((2, 2))
    scene.obj_radius = np.array([6.0, 6.0])
    scene.obj_depth = np.array([depth_a, depth_b])
    return scene


@pytest.mark.parametrize("depths,winner", [((3.0, 9.0), 1), ((9.0, 3.0), 4)])
def test_nearest_object_wins_overlap(depths, winner):
    clip = render_scene(_two_discs(*depths), np.zeros(1))
    assert clip["segmentation"][0, 16, 17] == winner
    assert clip["depth"][0, 16, 17] == 3.0
    assert clip["segmentation"][0, 0, 0] == 0


def test_motion_follows_real_time():
    clip = render_clip(np.random.default_rng(3), num_frames=6)
    same = render_clip(np.random.default_rng(3), timestamps=clip["timestamps"].numpy())
    assert all(torch.equal(clip[k], same[k]) for k in clip)
    slow = render_clip(np.random.default_rng(3), timestamps=2 * clip["timestamps"].numpy())
    assert torch.equal(slow["frames"][0], clip["frames"][0])
    for t in range(1, 6):
        assert not torch.equal(slow["frames"][t], clip["frames"][t])
    # visible yet moderate motion: about a second changes many pixels, but not the whole picture
    a, b = render_clip(np.random.default_rng(3), timestamps=np.array([0.0, 1.0]))["frames"].float()
    changed = ((a - b).abs().amax(0) > 8).float().mean()
    assert 0.05 < changed < 1.0


# --- synthetic: stochastic events ---------------------------------------------------------------


def test_events_off_renders_as_before():
    for seed in range(5):
        plain = render_clip(np.random.default_rng(seed), num_frames=6, num_shapes=4)
        off = render_clip(np.random.default_rng(seed), num_frames=6, num_shapes=4, event_rate=0.0, event_turn=10.0)
        assert all(torch.equal(plain[k], off[k]) for k in plain)
    a = SyntheticSource(num_frames=4, height=32, width=32).sample_clip(np.random.default_rng(1))
    b = SyntheticSource(num_frames=4, height=32, width=32, event_rate=0.0).sample_clip(np.random.default_rng(1))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_events_change_the_future_not_the_past():
    kw = dict(height=48, width=48, num_shapes=3)
    on = sample_scene(np.random.default_rng(1), event_rate=1.0, event_span=3.0, **kw)
    off = sample_scene(np.random.default_rng(1), **kw)
    assert np.isfinite(on.obj_event_time[:, 0]).all() and off.obj_event_time.shape == (3, 0)
    for f in fields(Scene):  # the same scene but for the events
        if not f.name.startswith("obj_event"):
            assert np.array_equal(getattr(on, f.name), getattr(off, f.name)), f.name
    t = np.linspace(0, 3, 61)
    first = on.obj_event_time[:, 0]  # (n,) each object's first event
    before = t[:, None] <= first  # (T, n)
    a, b = object_centres(on, t), object_centres(off, t)  # (T, n, 2)
    assert np.array_equal(a[before], b[before])
    assert (np.abs(a - b).max(-1)[t[:, None] > first + 0.1] > 0.01).all()
    frames_on, frames_off = render_scene(on, t)["frames"], render_scene(off, t)["frames"]
    assert torch.equal(frames_on[t <= first.min()], frames_off[t <= first.min()])
    assert not torch.equal(frames_on[-1], frames_off[-1])
    # drawing the events leaves the clip's rng alone: same frame times, same first frame
    clip_on = render_clip(np.random.default_rng(0), event_rate=2.0)
    clip_off = render_clip(np.random.default_rng(0))
    assert torch.equal(clip_on["timestamps"], clip_off["timestamps"])
    assert torch.equal(clip_on["frames"][0], clip_off["frames"][0])
    assert not torch.equal(clip_on["frames"][-1], clip_off["frames"][-1])


def test_labels_follow_objects_through_a_turn_and_a_bounce():
    scene = sample_scene(np.random.default_rng(0), height=64, width=64, num_classes=2, num_shapes=1)
    scene.obj_pos, scene.obj_vel, scene.obj_radius = np.array([[20.0, 20.0]]), np.array([[20.0, 0.0]]), np.array([6.0])
    scene.obj_event_time = np.array([[1.0, np.inf]])  # at 1 s: turn down and speed up; the padding never fires
    scene.obj_event_vel = np.array([[[0.0, 30.0], [-50.0, 0.0]]])
    t = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    # straight, turned at 1 s, then back off the bottom border at 64 px (y = 20 + 60 = 80 -> 48)
    expected = np.array([[20, 20], [30, 20], [40, 20], [40, 35], [40, 50], [40, 48]], dtype=np.float64)
    np.testing.assert_allclose(object_centres(scene, t)[:, 0], expected, atol=1e-9)
    clip = render_scene(scene, t)
    seg, depth = clip["segmentation"].numpy(), clip["depth"].numpy()
    ys, xs = np.mgrid[:64, :64] + 0.5
    for i in range(len(t)):
        mask = seg[i] == 1
        centroid = np.array([xs[mask].mean(), ys[mask].mean()])
        assert np.abs(centroid - expected[i]).max() < 0.25, (t[i], centroid)
        assert (depth[i][mask] == np.float32(scene.obj_depth[0])).all() and (depth[i][~mask] > 20).all()


def test_events_rerendered_at_other_times_show_the_same_trajectory():
    kw = dict(num_frames=6, event_rate=2.0, num_shapes=4)
    clip = render_clip(np.random.default_rng(3), **kw)
    t = clip["timestamps"].numpy()
    scene = sample_scene(np.random.default_rng(3), num_shapes=4, event_rate=2.0, event_span=5 / 3)
    assert (scene.obj_event_time < t[-1]).any()  # events happen within the clip
    again = render_clip(np.random.default_rng(3), timestamps=t, **kw)
    assert all(torch.equal(clip[k], again[k]) for k in clip)
    between = (t[1:] + t[:-1]) / 2
    both = render_clip(np.random.default_rng(3), timestamps=np.concatenate([t, between]), **kw)
    alone = render_clip(np.random.default_rng(3), timestamps=between, **kw)
    for k in ("frames", "segmentation", "depth"):
        assert torch.equal(both[k][:6], clip[k]) and torch.equal(both[k][6:], alone[k])


def test_sample_events_statistics():
    vel = np.tile([[3.0, 4.0]], (20000, 1))  # speed 5, heading atan2(4, 3)
    times, new_vel = sample_events(np.random.default_rng(0), vel, rate=1.5, turn=30.0, speed=(0.5, 2.0), span=2.0)
    real = np.isfinite(times)  # (n, E)
    assert real.sum(1).mean() == pytest.approx(3.0, abs=0.05)  # Poisson mean rate * span
    assert np.array_equal(times, np.sort(times, 1))  # ascending, the inf padding last
    assert times[real].min() >= 0 and times[real].max() <= 2 and times[real].mean() == pytest.approx(1.0, abs=0.02)
    ratio = np.linalg.norm(new_vel, axis=-1)[real] / 5
    assert ratio.min() >= 0.5 and ratio.max() <= 2.0 and ratio.std() > 0.3
    heading = np.arctan2(new_vel[..., 1], new_vel[..., 0])  # (n, E)
    previous = np.concatenate([np.full((len(vel), 1), np.arctan2(4, 3)), heading[:, :-1]], 1)  # (n, E)
    turns = np.rad2deg(np.angle(np.exp(1j * (heading - previous))))[real]  # wrapped to (-180, 180]
    assert np.abs(turns).max() <= 30 + 1e-9 and np.abs(turns).mean() == pytest.approx(15, abs=0.5)
    with pytest.raises(ValueError, match="event_speed"):
        render_clip(np.random.default_rng(0), event_rate=1.0, event_speed=(2.0, 1.0))
    with pytest.raises(ValueError, match="event_rate"):
        render_clip(np.random.default_rng(0), event_rate=-1.0)
    with pytest.raises(ValueError, match="event_span"):
        sample_scene(np.random.default_rng(0), event_rate=1.0)


def test_synthetic_source():
    source = SyntheticSource(num_frames=4, height=32, width=48)
    assert isinstance(source, ClipSource)
    clip = source.sample_clip(np.random.default_rng(0))
    assert clip["frames"].shape == (4, 3, 32, 48)
    assert torch.equal(clip["frames"], source.sample_clip(np.random.default_rng(0))["frames"])


# --- video decoding ------------------------------------------------------------------------------


def test_probe_video(grey_video):
    info = probe_video(grey_video)
    assert (info.width, info.height, info.num_frames) == (32, 32, 20)
    assert info.fps == pytest.approx(FPS)
    assert info.duration == pytest.approx(2.0, abs=1e-3)


def test_decode_frames_picks_last_frame_at_or_before_each_time(grey_video):
    # unsorted, repeated, exactly on a pts (0.5), after the last pts (1.95), and past a keyframe (1.25)
    requested = [0.95, 0.0, 0.05, 0.5, 1.25, 0.31, 1.95, 1.25]
    expected = torch.tensor([9, 0, 0, 5, 12, 3, 19, 12])
    frames, times = decode_frames(grey_video, requested)
    assert frames.shape == (8, 3, 32, 32) and frames.dtype == torch.uint8
    assert times.dtype == torch.float32
    assert torch.equal(frame_index(frames), expected)
    torch.testing.assert_close(times, expected.float() / FPS, atol=1e-4, rtol=0)


def test_decode_frames_seeks_within_later_gop(grey_video):
    frames, times = decode_frames(grey_video, [1.42, 1.61])
    assert frame_index(frames).tolist() == [14, 16]
    torch.testing.assert_close(times, torch.tensor([1.4, 1.6]), atol=1e-4, rtol=0)


def test_decode_frames_beyond_stream_raises(grey_video):
    with pytest.raises(VideoDecodeError, match="beyond the end"):
        decode_frames(grey_video, [0.5, 2.6])


@pytest.mark.parametrize("kind", ["zero", "truncated", "text"])
def test_broken_files_raise_naming_the_file(tmp_path, grey_video, kind):
    path = tmp_path / f"broken_{kind}.mp4"
    data = open(grey_video, "rb").read()
    path.write_bytes({"zero": b"", "truncated": data[: len(data) // 2], "text": b"not a video\n" * 50}[kind])
    for call in (lambda: probe_video(path), lambda: decode_frames(path, [0.0])):
        with pytest.raises(VideoDecodeError, match=f"broken_{kind}.mp4"):
            call()


# --- folder source -------------------------------------------------------------------------------


def test_video_folder_source(tmp_path):
    (tmp_path / "sub").mkdir()
    write_video(tmp_path / "sub" / "a.mkv", grey_frames(20, 32, 48), FPS)
    (tmp_path / "notes.txt").write_text("ignored")
    source = VideoFolderSource(tmp_path, num_frames=4, height=16, width=16, min_gap=0.1, max_gap=0.3)
    assert isinstance(source, ClipSource) and len(source.files) == 1
    clip = source.sample_clip(np.random.default_rng(0))
    assert clip.keys() == {"frames", "timestamps"}
    assert clip["frames"].shape == (4, 3, 16, 16) and clip["frames"].dtype == torch.uint8
    ts = clip["timestamps"]
    assert ts[0] == 0 and (ts.diff() >= 0).all() and ts[-1] <= 0.9 + 1e-4
    # the frames shown are the ones the true timestamps say
    idx = frame_index(clip["frames"])
    torch.testing.assert_close((idx - idx[0]).float() / FPS, ts, atol=1e-4, rtol=0)
    again = source.sample_clip(np.random.default_rng(0))
    assert torch.equal(again["frames"], clip["frames"]) and torch.equal(again["timestamps"], ts)


def test_video_folder_source_bad_clips(tmp_path):
    write_video(tmp_path / "short.mp4", grey_frames(6), FPS)  # 0.6 s
    source = VideoFolderSource(tmp_path, num_frames=8, min_gap=0.2, max_gap=0.3)  # needs >= 1.4 s
    with pytest.raises(BadClipError, match="short.mp4.*too short"):
        source.sample_clip(np.random.default_rng(0))
    (tmp_path / "short.mp4").write_bytes(b"garbage" * 10)
    with pytest.raises(BadClipError, match="short.mp4"):
        VideoFolderSource(tmp_path).sample_clip(np.random.default_rng(0))


def test_video_folder_source_empty_or_missing(tmp_path):
    (tmp_path / "readme.txt").write_text("no videos here")
    with pytest.raises(FileNotFoundError, match="no video files"):
        VideoFolderSource(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFolderSource(tmp_path / "missing")
