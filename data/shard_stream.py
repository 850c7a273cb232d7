"""Streaming samples from webdataset tar shards, split across DDP ranks and DataLoader workers.

Shards are named by local paths, brace patterns ("/data/shard-{000000..000099}.tar"), URLs, or
"pipe:<command>" (webdataset's openers; e.g. "pipe:aws s3 cp s3://bucket/shard-000001.tar -"), or
by the folder `deltaworld shards` wrote (its manifest lists them).

Splitting: the S = world_size x num_workers readers (slots) walk one shared sequence of shard
positions, slot s taking positions s, s + S, s + 2S, ... Position p reads shard perm_e[p mod n] of
epoch e = p div n, where perm_e is a permutation drawn from (seed, e) (the identity when not
shuffling). So within an epoch every shard goes to exactly one slot: no sample is read twice
across ranks or workers. Training streams are infinite (epochs follow each other, each reshuffled);
evaluation streams stop after one epoch. A shuffle buffer mixes samples across a slot's shards.
"""

import json
import logging
import random
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

from deltaworld.data.bad_inputs import BadInputs
from deltaworld.data.clips import BadClipError, ClipSampler
from deltaworld.data.media import VIDEO_EXTENSIONS, FrameSequence, Media, MediaInfo
from deltaworld.data.shards import MANIFEST, read_manifest
from deltaworld.data.video import VideoDecodeError

log = logging.getLogger(__name__)

Decoder = Callable[[dict, np.random.Generator], dict]


def resolve_urls(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs of a folder written by `deltaworld shards`, a brace pattern ("::" joins several),
    or a list of any of these."""
    if not isinstance(spec, str):
        return [url for item in spec for url in resolve_urls(item)]
    folder = Path(spec)
    if folder.is_dir():
        return [str(folder / url) for url in expand_urls(read_manifest(folder / MANIFEST)["urls"])]
    urls = expand_urls(spec)
    if not urls:
        raise ValueError(f"no shards in {spec!r}")
    return urls


def slot_positions(
    num_shards: int, slot: int, slots: int, *, seed: int, shuffle: bool, infinite: bool
) -> Iterator[tuple[int, int]]:
    """(epoch, shard index) read by reader `slot` of `slots` (see the module doc)."""
    p, perm, perm_epoch = slot, None, -1
    while infinite or p < num_shards:
        epoch = p // num_shards
        if epoch != perm_epoch:
            perm = np.random.default_rng([seed, epoch]).permutation(num_shards) if shuffle else np.arange(num_shards)
            perm_epoch = epoch
        yield epoch, int(perm[p % num_shards])
        p += slots


def reader_slot(rank: int, world_size: int) -> tuple[int, int, int]:
    """(slot, slots, worker) of this DataLoader worker of `rank`: rank x workers + worker."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    return rank * workers + worker, world_size * workers, worker


class ShardStream(IterableDataset):
    """Decoded samples of shards. `decode(sample, rng)` turns a raw webdataset sample (its files as
    bytes, plus "__key__" and "__url__") into an item. With `skip_bad` (default: in training, i.e.
    `infinite`) a sample it rejects (BadClipError, VideoDecodeError) and the rest of a shard that
    cannot be read on (truncated, corrupt) are skipped, counted and listed in `bad_inputs`, with a
    summary per epoch; otherwise the error propagates, naming the shard, the sample and its source."""

    def __init__(
        self,
        urls: str | Sequence[str],
        decode: Decoder,
        *,
        seed: int = 0,
        infinite: bool = True,
        shuffle: bool | None = None,
        shuffle_buffer: int = 1000,
        start: int = 0,
        limit: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        skip_bad: bool | None = None,
        bad_inputs: str | None = None,
    ) -> None:
        self.urls = resolve_urls(urls)
        # training (and validation inside a training run) skips bad inputs; evaluation stops at one
        self.skip_bad = infinite if skip_bad is None else skip_bad
        self.bad_inputs = bad_inputs  # the run folder's list of skipped inputs
        self.decode, self.seed, self.infinite = decode, seed, infinite
        self.shuffle = infinite if shuffle is None else shuffle
        self.shuffle_buffer = shuffle_buffer if self.shuffle else 0
        self.start = start  # e.g. the resumed batch: a restarted run draws a fresh stream, not a replay
        self.limit = limit  # at most this many items per reader
        if rank is None or world_size is None:  # resolved now: DataLoader workers may not see the process group
            distributed = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        self.rank, self.world_size = rank, world_size

    @property
    def stage(self) -> str:
        return "train" if self.infinite else "validation"

    def _raw(self, slot: int, slots: int, bad: BadInputs) -> Iterator[tuple[int, dict]]:
        positions = slot_positions(
            len(self.urls), slot, slots, seed=self.seed, shuffle=self.shuffle, infinite=self.infinite
        )
        for epoch, shard in positions:
            url = self.urls[shard]
            for sample in tarfile_samples([{"url": url}], handler=self._shard_error_handler(url, bad)):
                yield epoch, sample

    def _shard_error_handler(self, url: str, bad: BadInputs) -> Callable[[Exception], bool]:
        """What webdataset calls when a shard cannot be opened or read on (truncated, corrupt): in
        training the rest of the shard is skipped and recorded; in evaluation an error names it."""

        reported = False

        def handle(error: Exception) -> bool:
            nonlocal reported
            reason = (
                f"{url}: unreadable shard, rest skipped ({type(error).__name__}: {error.args[0] if error.args else ''})"
            )
            if not self.skip_bad:
                raise BadClipError(reason) from error
            if not reported:  # webdataset reports one failure at each level of its reader
                bad.record(self.stage, BadClipError(reason))
                reported = True
            return True

        return handle

    def _buffered(self, samples: Iterator[tuple[int, dict]], rng: random.Random) -> Iterator[tuple[int, dict]]:
        """Reservoir-style shuffle: each new sample swaps with a random one of the buffer."""
        buffer: list[tuple[int, dict]] = []
        for item in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], item = item, buffer[i]
            yield item
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[dict]:
        slot, slots, worker = reader_slot(self.rank, self.world_size)
        rng = np.random.default_rng([self.seed, self.start, slot, slots])
        bad_inputs = BadInputs(self.bad_inputs)
        samples = self._raw(slot, slots, bad_inputs)
        if self.shuffle_buffer > 1:
            samples = self._buffered(samples, random.Random(int(rng.integers(2**63))))
        epoch, good, bad, total = None, 0, [], 0
        for sample_epoch, sample in samples:
            if epoch is None or sample_epoch > epoch:  # the buffer blurs the boundary a little
                self._summary(epoch, slot, good, bad)
                epoch, good, bad = sample_epoch, 0, []
            try:
                item = self.decode(sample, rng)
            except (BadClipError, VideoDecodeError) as e:
                if not self.skip_bad:
                    raise
                bad.append(str(e))
                bad_inputs.record(self.stage, e)
                continue
            good, total = good + 1, total + 1
            yield item
            if total == self.limit:
                break
        self._summary(epoch, slot, good, bad)

    @staticmethod
    def _summary(epoch: int | None, slot: int, good: int, bad: list[str]) -> None:
        if epoch is not None:
            level = logging.WARNING if bad else logging.INFO
            log.log(
                level,
                "shard epoch %d, reader %d: %d samples, %d bad inputs skipped%s",
                epoch,
                slot,
                good,
                len(bad),
                "".join(f"\n  {b}" for b in bad[:20]),
            )


FRAME_KEY = re.compile(r"^\d{6}\.(jpg|jpeg|png)$")


def sample_name(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


def sample_media(sample: dict) -> tuple[Media, MediaInfo, str]:
    """The video of a shard sample (its file's bytes, or its frames with their times), the probe
    stored with it, and a name for errors (shard, key, source file)."""
    if "json" not in sample:
        raise BadClipError(f"{sample_name(sample)}: sample has no json metadata")
    meta = json.loads(sample["json"])
    name = f"{sample_name(sample)} ({meta.get('source', '?')})"
    info = MediaInfo(meta["last"], meta["fps"], meta["num_frames"], meta["width"], meta["height"])
    frames = sorted(k for k in sample if FRAME_KEY.match(k))
    if frames:
        return FrameSequence([sample[k] for k in frames], np.asarray(meta["timestamps"]), name), info, name
    videos = [k for k in sample if f".{k}" in VIDEO_EXTENSIONS]
    if not videos:
        raise BadClipError(f"{name}: sample holds neither a video nor frames ({sorted(sample)})")
    return sample[videos[0]], info, name


class ClipDecoder:
    """Shard sample -> clip: a random training clip, or (eval) the deterministic middle clip."""

    def __init__(self, sampler: ClipSampler, *, eval: bool = False) -> None:
        self.sampler, self.eval = sampler, eval

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        media, info, name = sample_media(sample)
        if self.eval:
            return self.sampler.middle(media, info=info, name=name)
        return self.sampler.sample(media, rng, info=info, name=name)


def tensors_of(sample: dict) -> dict[str, torch.Tensor]:
    """The .npy entries of a raw sample as tensors (feature/token cache shards)."""
    from webdataset.autodecode import npy_loads

    return {k[:-4]: torch.from_numpy(npy_loads(v)) for k, v in sample.items() if k.endswith(".npy")}


class ShardSource:
    """Clips from video shards (what `deltaworld shards` writes): the settings of a video source
    (see data.clips.ClipSampler), read as streams rather than drawn by index."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        num_frames: int = 8,
        height: int = 64,
        width: int = 64,
        min_gap: float = 1 / 25,
        max_gap: float = 1 / 3,
        augment: bool = True,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio_jitter: float = 4 / 3,
        hflip: bool = True,
        eval_stride: float = 0.2,
        shuffle_buffer: int = 256,
    ) -> None:
        self.urls = resolve_urls(urls)
        self.sampler = ClipSampler(
            num_frames=num_frames,
            height=height,
            width=width,
            min_gap=min_gap,
            max_gap=max_gap,
            augment=augment,
            scale=tuple(scale),
            ratio_jitter=ratio_jitter,
            hflip=hflip,
            eval_stride=eval_stride,
        )
        self.shuffle_buffer = shuffle_buffer

    def stream(self, *, seed: int, eval: bool = False, shuffle: bool | None = None, **kw) -> ShardStream:
        """Training: infinite, reshuffled random clips. eval: one ordered pass of middle clips."""
        return ShardStream(
            self.urls,
            ClipDecoder(self.sampler, eval=eval),
            seed=seed,
            infinite=not eval,
            shuffle=shuffle,
            shuffle_buffer=self.shuffle_buffer,
            **kw,
        )
