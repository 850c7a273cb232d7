"""LightningDataModule serving clips from any clip source, or their cached tokens."""

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from data.sources import ClipSource
from data.stream import TRAIN_STREAM, ClipStream, FixedClips
from data.token_cache import CachedClipStream, build_token_cache, describe_source, read_token_cache


class ClipDataModule(L.LightningDataModule):
    """Training: an infinite deterministic stream positioned by the trainer's step (exact resume).
    Validation: a fixed set of clips.

    token_cache {path, clips, rebuild}: train on the tokens of `clips` fixed training clips,
    computed once by the LightningModule's frozen tokenizer (its `token_encoder()`) and stored at
    `path`; a cache produced by other weights or settings is refused. Validation still sees frames.
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
    ) -> None:
        super().__init__()
        self.root = root  # where a file-backed source reads (recorded with the run's config)
        self.source, self.val_source = source, val_source or source
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_clips, self.val_batch_size = val_clips, val_batch_size or batch_size
        self.seed = seed
        self.token_cache = dict(token_cache) if token_cache else None
        self.cached = None  # the cache's tensors once set up

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.token_cache and self.cached is None:
            self.cached = self._load_or_build_cache()

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
        if trainer.is_global_zero and (cfg.get("rebuild") or not path.is_file()):
            clips = FixedClips(self.source, num_clips=cfg["clips"], seed=self.seed, stream=TRAIN_STREAM)
            build_token_cache(path, clips, encode, fingerprint, batch_size=self.batch_size, num_workers=self.num_workers)
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
        if self.cached is not None:
            stream = CachedClipStream(self.cached, **position)
        else:
            stream = ClipStream(self.source, **position)
        return self._loader(stream, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set(), self.val_batch_size)

    def eval_set(self) -> FixedClips:
        return FixedClips(self.val_source, num_clips=self.val_clips, seed=self.seed)
