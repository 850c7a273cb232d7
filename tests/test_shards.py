"""Shard packing (formats, bad inputs, resume), streaming (rank/worker splitting, shuffle, eval vs
training), token caches as shards, and the shard DataModule."""

import json
import logging
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import webdataset as wds
from PIL import Image
from test_data import FPS, frame_index, grey_frames
from torch.utils.data import DataLoader

from deltaworld.data.clips import ClipSampler
from deltaworld.data.datamodule import ShardDataModule
from deltaworld.data.shard_stream import ClipDecoder, ShardSource, ShardStream, slot_positions
from deltaworld.data.shards import PackSettings, pack_shards
from deltaworld.data.token_cache import StaleCacheError, decode_cached, read_token_cache, write_cache_shards
from deltaworld.data.video import write_video

SETTINGS = dict(samples_per_shard=2, min_frames=8, min_duration=0.5, frame_fps=FPS, short_side=None)


def make_inputs(root, *, good: int = 5, bad: bool = True):
    """`good` grey videos of 20 frames (2 s) at FPS, and one input of every bad kind."""
    for i in range(good):
        ext = (".mp4", ".mkv", ".avi")[i % 3]
        write_video(root / f"good{i}{ext}", grey_frames(20, 32, 48), FPS)
    if bad:
        data = (root / "good0.mp4").read_bytes()
        (root / "zero.mp4").write_bytes(b"")
        (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
        (root / "text.mkv").write_text("definitely not a video\n" * 40)
        write_video(root / "short.mp4", grey_frames(4, 32, 48), FPS)
        frames = root / "frames_bad"
        frames.mkdir()
        for i in range(10):
            (frames / f"{i:05d}.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = make_inputs(tmp_path_factory.mktemp("videos"))
    frames = root / "frames_good"
    frames.mkdir()
    for i, image in enumerate(grey_frames(20, 32, 48)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(frames / f"{i:05d}.png")
    out = {fmt: tmp_path_factory.mktemp(fmt) for fmt in ("video", "jpeg")}
    manifests = {fmt: pack_shards(root, out[fmt], PackSettings(format=fmt, **SETTINGS)) for fmt in out}
    return root, out, manifests


def test_pack_lists_every_bad_input_with_its_reason(packed):
    root, out, manifests = packed
    for fmt, manifest in manifests.items():
        assert manifest["num_samples"] == 6 and manifest["num_shards"] == 6  # 11 inputs, 2 per shard
        reasons = {os.path.basename(b["path"]): b["reason"] for b in manifest["bad"]}
        assert set(reasons) == {"zero.mp4", "truncated.mp4", "text.mkv", "short.mp4", "frames_bad"}
        assert "empty file" in reasons["zero.mp4"] and "too short" in reasons["short.mp4"]
        assert "unreadable image" in reasons["frames_bad"] and "text.mkv" in reasons["text.mkv"]
        assert json.loads((out[fmt] / "manifest.json").read_text()) == manifest
        assert manifest["bytes_per_sample"] > 0


def test_pack_resumes_only_unfinished_shards(tmp_path):
    (tmp_path / "in").mkdir()
    root = make_inputs(tmp_path / "in", good=4, bad=False)
    out = tmp_path / "out"
    first = pack_shards(root, out, PackSettings(**SETTINGS))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    (out / "shard-000001.json").unlink()  # as if interrupted while packing shard 1
    (out / "shard-000001.tar").unlink()
    again = pack_shards(root, out, PackSettings(**SETTINGS))
    assert again == first
    assert (out / "shard-000000.tar").stat().st_mtime_ns == stamps["shard-000000.tar"]  # not rewritten
    with pytest.raises(ValueError, match="packed differently.*settings"):
        pack_shards(root, out, PackSettings(**{**SETTINGS, "format": "jpeg"}))


def eval_clips(urls, **kw) -> list[dict]:
    sampler = ClipSampler(num_frames=4, height=32, width=32, eval_stride=0.3)
    return list(ShardStream(urls, ClipDecoder(sampler, eval=True), infinite=False, **kw))


def test_eval_stream_reads_every_sample_once_in_order_with_true_times(packed):
    _, out, _ = packed
    clips = {fmt: eval_clips(str(out[fmt])) for fmt in out}
    for fmt in out:
        assert len(clips[fmt]) == 6
        for clip in clips[fmt]:
            # middle of 2 s (last frame 1.9 s): requests 0.5, 0.8, 1.1, 1.4 -> frames 5, 8, 11, 14
            assert frame_index(clip["frames"]).tolist() == [5, 8, 11, 14]
            torch.testing.assert_close(clip["timestamps"], torch.tensor([0.0, 0.3, 0.6, 0.9]), atol=1e-4, rtol=0)
    for a, b in zip(clips["video"], clips["jpeg"], strict=True):  # both formats: the same frames
        assert (a["frames"].float() - b["frames"].float()).abs().mean() < 2


def test_brace_pattern_and_list_resolve_like_the_folder(packed):
    _, out, _ = packed
    pattern = str(out["video"] / "shard-{000000..000005}.tar")
    assert len(eval_clips(pattern)) == len(eval_clips([pattern])) == 6
    assert len(eval_clips(f"pipe:cat {out['video'] / 'shard-000000.tar'}")) == 1  # one good input in shard 0


def test_slot_positions_cover_each_shard_once_per_epoch():
    n, slots = 7, 4
    for infinite in (False, True):
        read = []
        for slot in range(slots):
            positions = slot_positions(n, slot, slots, seed=3, shuffle=True, infinite=infinite)
            read += [pos for _, pos in zip(range(20), positions, strict=False)]
        for epoch in range(3 if infinite else 1):
            assert sorted(shard for e, shard in read if e == epoch) == list(range(n))
    orders = [[s for _, s in zip(range(7), slot_positions(n, 0, 1, seed=3, shuffle=True, infinite=True), strict=False)]]
    orders.append(
        [s for _, s in zip(range(7), slot_positions(n, 0, 1, seed=4, shuffle=True, infinite=True), strict=False)]
    )
    assert orders[0] != orders[1]  # the order depends on the seed


def test_workers_split_without_duplicates_and_training_shuffles(packed):
    _, out, _ = packed
    sampler = ClipSampler(num_frames=4, height=32, width=32)
    keyed = lambda sample, rng: {"key": sample["__key__"]}  # noqa: E731
    loader = DataLoader(ShardStream(str(out["video"]), keyed, infinite=False), batch_size=None, num_workers=2)
    keys = [item["key"] for item in loader]
    assert len(keys) == len(set(keys)) == 6
    train = iter(ShardStream(str(out["video"]), ClipDecoder(sampler), seed=1, shuffle_buffer=4))
    clips = [next(train) for _ in range(18)]  # three epochs, endless
    assert all(c["frames"].shape == (4, 3, 32, 32) for c in clips)
    assert len({tuple(c["timestamps"].tolist()) for c in clips}) > 10  # random times, not one clip


def test_training_stream_skips_bad_samples_eval_names_them(tmp_path, packed, caplog):
    _, out, _ = packed
    shard = tmp_path / "mixed.tar"
    with wds.TarWriter(str(shard)) as sink:
        good = next(iter(wds.WebDataset(str(out["video"] / "shard-000000.tar"), shardshuffle=False)))
        sink.write({k: v for k, v in good.items() if not k.startswith("__url")})
        meta = json.loads(good["json"])
        sink.write({"__key__": "broken", "mp4": b"\x00" * 300, "json": json.dumps({**meta, "source": "broken.mp4"})})
    sampler = ClipSampler(num_frames=4, height=32, width=32)
    with caplog.at_level(logging.INFO, logger="deltaworld.data.shard_stream"):
        clips = list(ShardStream(str(shard), ClipDecoder(sampler), infinite=True, shuffle=False, limit=3))
    assert len(clips) == 3
    assert "1 bad inputs skipped" in caplog.text and "broken.mp4" in caplog.text
    with pytest.raises(RuntimeError, match=r"mixed.tar:broken \(broken.mp4\)"):
        eval_clips(str(shard))


def _ddp_rank(rank: int, world: int, port: int, urls: str, out: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    stream = ShardStream(urls, lambda sample, rng: {"key": sample["__key__"]}, infinite=False)
    keys = [item["key"] for item in DataLoader(stream, batch_size=None, num_workers=2)]
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(keys, f)
    dist.destroy_process_group()


def test_two_ddp_ranks_read_disjoint_samples(packed, tmp_path):
    _, out, _ = packed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_rank, args=(2, port, str(out["video"]), str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(ranks) and not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(set(ranks[0] + ranks[1])) and len(ranks[0] + ranks[1]) == 6


def test_token_cache_as_shards(tmp_path):
    clips = [{"tokens": torch.randn(3, 1, 4), "timestamps": torch.arange(3.0)} for _ in range(5)]
    path = write_cache_shards(tmp_path / "tokens", clips, {"tokenizer_weights": "aaa"}, samples_per_shard=2)
    urls = read_token_cache(path, {"tokenizer_weights": "aaa"})
    assert len(urls) == 3
    read = list(ShardStream(urls, decode_cached, infinite=False))
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(clips, read, strict=True))
    with pytest.raises(StaleCacheError, match="tokenizer_weights: cache has 'aaa', this run needs 'bbb'"):
        read_token_cache(path, {"tokenizer_weights": "bbb"})


def test_shard_datamodule_batches(packed):
    _, out, _ = packed
    dm = ShardDataModule(
        source=ShardSource(str(out["jpeg"]), num_frames=4, height=32, width=32, shuffle_buffer=2),
        batch_size=3,
        val_clips=2,
        seed=0,
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (3, 4, 3, 32, 32) and batch["timestamps"].shape == (3, 4)
    val = list(dm.val_dataloader())
    assert sum(len(b["frames"]) for b in val) == 2
    cached = list(dm.cache_clips(8))  # the token cache's clips: repeats epochs when asked for more
    assert len(cached) == 8


def test_train_from_shards_end_to_end(packed, tmp_path):
    from test_training import FAST

    from deltaworld.tokenizer.fit import run_training

    from conftest import compose_train

    _, out, _ = packed
    overrides = [
        *FAST,
        "data=shards",
        f"data.root={out['video']}",
        "data.num_workers=0",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    ]
    export = run_training(compose_train(overrides, tmp_path / "run"))
    assert export.is_file()
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
