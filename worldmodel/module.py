"""LightningModule that trains DeltaWorld on the tokens of a frozen backbone + DeltaTok."""

from collections.abc import Callable, Sequence

import torch
from torch import nn

from deltaworld.tokenizer.checkpoint import load_tokenizer, read_metadata
from deltaworld.tokenizer.losses import feature_loss
from deltaworld.tokenizer.module import (
    FACTORY_ARGS,
    FrozenBackboneModule,
    OptimizerFactory,
    SchedulerFactory,
)
from deltaworld.tokenizer.training import compile_blocks, parameter_digest, step_generator
from deltaworld.worldmodel.checkpoint import build_world, world_export, world_export_metadata
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.predictor import PredictorBlock
from deltaworld.worldmodel.sampling import copy_last, forecast_cases, world_forecaster
from deltaworld.worldmodel.spaces import build_space


class WorldModule(FrozenBackboneModule):
    """Best-of-N teacher forcing over clips of T frames (tokens from the frames, or from a token
    cache when the datamodule provides batches with "tokens")."""

    frozen_modules = ("backbone", "deltatok")

    def __init__(
        self,
        *,
        tokenizer_ckpt: str,
        frame_size: int | None = None,
        world: DeltaWorld | Callable[..., DeltaWorld],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        space: str = "delta",
        num_hypotheses: int = 256,
        eval_samples: int = 20,
        loss: str = "smooth_l1",
        loss_beta: float = 0.1,
        eval_context: int = 4,
        eval_horizons: Sequence[int] = (1, 3),
        seed: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer=optimizer, scheduler=scheduler)
        self.save_hyperparameters(ignore=["world", *FACTORY_ARGS])
        if tokenizer_ckpt is None:
            raise ValueError(
                "the world-model stage needs a trained tokenizer: pass tokenizer_ckpt=<tokenizer.safetensors>"
            )
        self.backbone, self.deltatok = load_tokenizer(tokenizer_ckpt)
        self.tokenizer_metadata = read_metadata(tokenizer_ckpt)
        self.space = build_space(space, self.deltatok)
        # the size this stage trains at (DeltaTok's RoPE is resolution-free, so it may differ from the
        # tokenizer's); the export records it, since it is the size the world model knows
        self.frame_size = frame_size or self.tokenizer_metadata["frame_size"]
        grid = self.backbone.grid(self.frame_size, self.frame_size)
        self.world = build_world(world, self.space, num_patches=grid[0] * grid[1], feature_dim=self.backbone.dim)
        if self.world.deterministic and num_hypotheses != 1:
            raise ValueError(f"a deterministic world model trains with num_hypotheses=1, got {num_hypotheses}")
        if compile:
            compile_blocks(self.world, PredictorBlock)
        self.criterion = feature_loss(loss, beta=loss_beta)

    def trainable(self) -> DeltaWorld:
        return self.world

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, T, 3, H, W) -> tokens (B, T, K, C) of the world model's token space."""
        frames = frames.to(self.device)
        h, w = frames.shape[-2:]
        return self.space.encode(self.backbone(frames), self.backbone.grid(h, w), self.backbone.black_features(h, w))

    def token_encoder(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
        """For the datamodule's token cache: the encoder and the fingerprint of what it computes."""
        fingerprint = {
            "space": self.space.name,
            "backbone": self.tokenizer_metadata["backbone"],
            "backbone_weights": parameter_digest(self.backbone)[:16],
            "tokenizer": self.tokenizer_metadata["tokenizer"],
            "tokenizer_weights": parameter_digest(self.deltatok)[:16],
        }
        return self.encode_frames, fingerprint

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        tokens = batch["tokens"] if "tokens" in batch else self.encode_frames(batch["frames"])  # (B, T, K, C)
        loss, stats = self.world.teacher_forced_loss(
            tokens,
            batch["timestamps"].to(tokens.dtype),
            num_hypotheses=self.hparams.num_hypotheses,
            loss_fn=self.criterion,
            generator=step_generator(self.hparams.seed, self.global_step, self.device),
        )
        b = tokens.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for name, value in stats.items():  # best-of-N vs mean over hypotheses: their gap is diversity
            self.log(f"train/{name}", value, batch_size=b)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        frames = batch["frames"]
        h, w = frames.shape[-2:]
        feats = self.backbone(frames)
        samples = 1 if self.world.deterministic else self.hparams.eval_samples
        methods = [
            copy_last,
            world_forecaster(
                self.world,
                self.space,
                samples=samples,
                generator=step_generator(self.hparams.seed, batch_idx, self.device),
            ),
        ]
        cases = forecast_cases(
            feats,
            batch["timestamps"].to(feats.dtype),
            self.backbone.grid(h, w),
            self.backbone.black_features(h, w),
            context=self.hparams.eval_context,
            horizons=self.hparams.eval_horizons,
        )
        for case in cases:
            for method in methods:
                for name, pred in method(case).items():
                    loss = nn.functional.mse_loss(pred.float(), case.target_feats.float())
                    self.log(f"val/feat_loss_{name}_h{case.horizon}", loss, batch_size=frames.shape[0])

    def exported(self) -> nn.Module:
        return world_export(self.world, self.deltatok)

    def export_metadata(self, cfg: dict) -> dict:
        """What `load_world` needs to rebuild backbone, DeltaTok, token space and DeltaWorld."""
        tokenizer_metadata = {k: self.tokenizer_metadata[k] for k in ("backbone", "tokenizer")}
        tokenizer_metadata["frame_size"] = self.frame_size
        return world_export_metadata(
            self.world, tokenizer_metadata=tokenizer_metadata, world_config=cfg["world"], space=self.space.name
        )
