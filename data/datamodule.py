"""LightningDataModules serving clips from a clip source or from video shards, or their cached tokens."""

import logging
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset, IterableDataset

from deltaworld.data.bad_inputs import BAD_INPUTS_FILE, read_bad_inputs
from deltaworld.data.shard_stream import ShardSource, ShardStream
from deltaworld.data.sources import ClipSource
from deltaworld.data.stream import TRAIN_STREAM, ClipStream, FixedClips, SkipBadItems
from deltaworld.data.token_cache import (
    CachedClipStream,
    build_token_cache,
    decode_cached,
    describe_source,
    read_token_cache,
)

log = logging.getLogger(__name__)


class ClipDataModule(L.LightningDataModule):
    """Training: an infinite deterministic stream positioned by the trainer's step (exact resume).
    Validation: a fixed set of clips.

    token_cache {path, clips, rebuild}: train on the tokens of `clips` fixed training clips (with
    their actions where the source gives them, for an action world model), computed once by the
    LightningModule's frozen tokenizer (its `token_encoder()`) and stored at `path` (a .safetensors
    file, or else a folder of shards streamed like video shards); a cache produced by other weights
    or settings is refused. Validation still sees frames.
    """

    def __init__(
        self,
        *,
        source: ClipSource,
        batch_size: int = 8,
        num_workers: int = 0,
        val_clips: int = 16,
        val_batch_size: int | None = None,
        seed: int = 0,
        val_source: ClipSource | None = None,
        root: str | None = None,
        token_cache: dict | None = None,
        val_set: Dataset | None = None,
    ) -> None:
        super().__init__()
        self.root = root  # where a file-backed source reads (recorded with the run's config)
        self.source, self.val_source = source, val_source or source
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_clips, self.val_batch_size = val_clips, val_batch_size or batch_size
        self.seed = seed
        self.token_cache = dict(token_cache) if token_cache else None
        self.val_set = val_set  # a fixed evaluation set replacing clips drawn from val_source
        self.cached = None  # the cache's tensors once set up

    @property
    def bad_inputs(self) -> str | None:
        """The run folder's list of skipped inputs (`bad_inputs.jsonl`), when run by a trainer."""
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else str(Path(trainer.default_root_dir) / BAD_INPUTS_FILE)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.token_cache and self.cached is None:
            self.cached = self._load_or_build_cache()

    def teardown(self, stage: str) -> None:
        if self.bad_inputs and (skipped := read_bad_inputs(Path(self.bad_inputs).parent)):
            log.warning("%d bad inputs were skipped in this run; the list: %s", len(skipped), self.bad_inputs)

    def _load_or_build_cache(self) -> dict:
        cfg, trainer = self.token_cache, self.trainer
        encode, model_fingerprint = trainer.lightning_module.token_encoder()
        fingerprint = {
            **model_fingerprint,
            "source": describe_source(self.source),
            "clips": cfg["clips"],
            "seed": self.seed,
        }
        path = Path(cfg["path"])
        if trainer.is_global_zero and (cfg.get("rebuild") or not path.exists()):
            clips = self.cache_clips(cfg["clips"])
            # a stream read by several workers would give each worker's first clips: read it in one
            workers = 0 if isinstance(clips, IterableDataset) else self.num_workers
            build_token_cache(path, clips, encode, fingerprint, batch_size=self.batch_size, num_workers=workers)
        trainer.strategy.barrier("token_cache")
        return read_token_cache(path, fingerprint)

    def _loader(self, dataset, batch_size: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=False,
            pin_memory=False,
        )

    def cache_clips(self, num_clips: int) -> Dataset:
        """The clips a token cache encodes."""
        return FixedClips(self.source, num_clips=num_clips, seed=self.seed, stream=TRAIN_STREAM)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # called after a checkpoint is restored, so global_step is the resumed position
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        position = dict(
            batch_size=self.batch_size,
            seed=self.seed,
            start_batch=start,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        return self._loader(self.train_stream(position), self.batch_size)

    def train_stream(self, position: dict) -> IterableDataset:
        if isinstance(self.cached, list):  # a shard cache: streamed, resumes on a fresh stream
            return ShardStream(
                self.cached,
                decode_cached,
                seed=self.seed,
                start=position["start_batch"],
                bad_inputs=self.bad_inputs,
                rank=position["rank"],
                world_size=position["world_size"],
            )
        if self.cached is not None:
            return CachedClipStream(self.cached, **position)
        return ClipStream(self.source, bad_inputs=self.bad_inputs, **position)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set(), self.val_batch_size)

    def eval_set(self) -> Dataset | IterableDataset:
        """Validation clips; a bad input among them is skipped and recorded, as in training."""
        if self.val_set is not None:
            return SkipBadItems(self.val_set, bad_inputs=self.bad_inputs)
        return FixedClips(self.val_source, num_clips=self.val_clips, seed=self.seed, bad_inputs=self.bad_inputs)


class ShardDataModule(ClipDataModule):
    """Training on video shards: an infinite stream, shards reshuffled every epoch and split across
    ranks and workers (no clip read twice within an epoch), a shuffle buffer, bad samples skipped and
    counted. A resumed run continues on a fresh stream (seeded by its step), not a replay: shards
    cannot be entered mid-way. Validation: the middle clips of the first `val_clips` samples of
    `val_source` (default: the training shards) per rank, read in order in the main process.
    """

    def __init__(self, *, source: ShardSource, val_source: ShardSource | None = None, **kw) -> None:
        super().__init__(source=source, val_source=val_source, **kw)

    def cache_clips(self, num_clips: int) -> Dataset:
        # the first clips of one unshuffled reader: the same set whatever the workers and ranks
        return self.source.stream(seed=self.seed, shuffle=False, limit=num_clips, rank=0, world_size=1)

    def train_stream(self, position: dict) -> IterableDataset:
        if self.cached is not None:
            return super().train_stream(position)
        return self.source.stream(seed=self.seed, start=position["start_batch"], bad_inputs=self.bad_inputs)

    def eval_set(self) -> IterableDataset:
        return self.val_source.stream(
            seed=self.seed, eval=True, limit=self.val_clips, skip_bad=True, bad_inputs=self.bad_inputs
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_set(), batch_size=self.val_batch_size, num_workers=0)
