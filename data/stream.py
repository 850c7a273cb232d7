"""Deterministic, resumable clip streams over a clip source.

Sample k of the training stream is a pure function of (seed, k): the position in the stream follows
from the optimizer step alone, so a resumed run sees exactly the clips the uninterrupted run saw,
whatever the number of workers or ranks.
"""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from deltaworld.data.bad_inputs import BadInputs
from deltaworld.data.frame_datasets import DatasetFileError
from deltaworld.data.sources import BadClipError, ClipSource
from deltaworld.data.video import VideoDecodeError

# what an unreadable input raises (each names the file); anything else is a bug and propagates
BAD_INPUT_ERRORS = (BadClipError, VideoDecodeError, DatasetFileError)

TRAIN_STREAM, EVAL_STREAM = 0, 1  # evaluation clips stay disjoint from training clips of the same seed


def draw_clip(
    source: ClipSource,
    seed: int,
    index: int,
    *,
    stream: int = TRAIN_STREAM,
    max_retries: int = 8,
    bad: BadInputs | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Clip `index` of a stream, redrawing after bad inputs (recorded in `bad`); returns (clip,
    number skipped)."""
    bad = bad or BadInputs()
    for attempt in range(max_retries):
        rng = np.random.default_rng([seed, index, attempt, stream])
        try:
            return source.sample_clip(rng), attempt
        except BadClipError as err:
            bad.record("train" if stream == TRAIN_STREAM else "validation", err)
    raise RuntimeError(f"{max_retries} consecutive bad inputs while drawing clip {index}; check the data")


class PositionedStream(IterableDataset):
    """Base of the infinite training streams: batch b of rank r holds samples ((b * world + r) * B + j),
    starting at batch `start_batch`; what a sample index yields is up to the subclass."""

    def __init__(self, *, batch_size: int, seed: int, start_batch: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.batch_size, self.seed = batch_size, seed
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    def indices(self) -> Iterator[int]:
        """Endless sample indices of this rank and DataLoader worker (the DataLoader takes whole
        batches round-robin from workers: worker w serves batches w, w+W, ...)."""
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        batch = self.start_batch + worker
        while True:
            first = (batch * self.world_size + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)
            batch += num_workers


class ClipStream(PositionedStream):
    """Infinite training stream of clips drawn from a source."""

    def __init__(self, source: ClipSource, *, bad_inputs: str | None = None, **position) -> None:
        super().__init__(**position)
        self.source = source
        self.bad = BadInputs(bad_inputs)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for index in self.indices():
            yield draw_clip(self.source, self.seed, index, bad=self.bad)[0]


class FixedClips(Dataset):
    """A finite, reproducible set of `num_clips` clips drawn from a source (by default the
    evaluation stream, disjoint from training clips)."""

    def __init__(
        self, source: ClipSource, *, num_clips: int, seed: int, stream: int = EVAL_STREAM, bad_inputs: str | None = None
    ) -> None:
        self.source, self.num_clips, self.seed, self.stream = source, num_clips, seed, stream
        self.bad = BadInputs(bad_inputs)

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_clips:
            raise IndexError(index)
        return draw_clip(self.source, self.seed, index, stream=self.stream, bad=self.bad)[0]


class SkipBadItems(IterableDataset):
    """The items of a map-style evaluation set (e.g. `MiddleClips`) with unreadable ones skipped and
    recorded: for validation inside a training run, which must not die on one bad file. Worker w of
    W reads items w, w + W, ... (each item once)."""

    def __init__(self, dataset: Dataset, *, bad_inputs: str | None = None) -> None:
        self.dataset, self.bad_inputs = dataset, bad_inputs

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        bad = BadInputs(self.bad_inputs)
        for index in range(worker, len(self.dataset), workers):
            try:
                yield self.dataset[index]
            except BAD_INPUT_ERRORS as err:
                bad.record("validation", err)
