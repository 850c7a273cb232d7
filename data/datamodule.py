"""LightningDataModule serving clips from any clip source."""

import lightning as L
from torch.utils.data import DataLoader

from data.sources import ClipSource
from data.stream import ClipStream, FixedClips


class ClipDataModule(L.LightningDataModule):
    """Training: an infinite deterministic stream positioned by the trainer's step (exact resume).
    Validation: a fixed set of clips."""

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
    ) -> None:
        super().__init__()
        self.root = root  # where a file-backed source reads (recorded with the run's config)
        self.source, self.val_source = source, val_source or source
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_clips, self.val_batch_size = val_clips, val_batch_size or batch_size
        self.seed = seed

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
        stream = ClipStream(
            self.source,
            batch_size=self.batch_size,
            seed=self.seed,
            start_batch=start,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        return self._loader(stream, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set(), self.val_batch_size)

    def eval_set(self) -> FixedClips:
        return FixedClips(self.val_source, num_clips=self.val_clips, seed=self.seed)
