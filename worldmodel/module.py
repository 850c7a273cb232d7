"""LightningModule that trains DeltaWorld on the tokens of a frozen backbone + DeltaTok, optionally
conditioned on per-frame actions, and the rollout of such an action model under given actions.

With `action_dim` A > 0 each frame's action a_t (taken at frame t, driving frame t + 1) is appended
to every one of its K tokens along channels (`worldmodel.actions.with_actions`), as the pixel action
model does: DeltaWorld is unchanged over tokens of C + A channels, and a rollout under given actions
writes them into each predicted frame's action channels before it becomes context.
"""

from collections.abc import Callable, Sequence
from functools import partial

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
from deltaworld.worldmodel.actions import action_feedback, channel_weighted, with_actions
from deltaworld.worldmodel.checkpoint import build_world, world_export, world_export_metadata
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.predictor import PredictorBlock
from deltaworld.worldmodel.sampling import (
    ForecastCase,
    Method,
    copy_last,
    forecast_cases,
    token_forecaster,
    token_futures,
    world_forecaster,
)
from deltaworld.worldmodel.spaces import DeltaTokens, PatchTokens, build_space


@torch.no_grad()
def action_rollout(
    world: DeltaWorld,
    context: torch.Tensor,
    context_times: torch.Tensor,
    future_times: torch.Tensor,
    *,
    context_actions: torch.Tensor,
    future_actions: torch.Tensor,
    samples: int,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """M futures of an action world model under given actions: context tokens (B, Tc, K, C) at
    context_times (B, Tc), whose frames took context_actions (B, Tc, A) (the last one drives the
    first future frame), future_times (B, H) and the actions taken at the future frames
    future_actions (B, H, A) -> future tokens (B, M, H, K, C), action channels dropped."""
    a = context_actions.shape[-1]
    if context.shape[-1] + a != world.token_dim or future_actions.shape[-1] != a:
        raise ValueError(
            f"tokens of {context.shape[-1]} channels with actions of {a} (given {future_actions.shape[-1]} "
            f"in the future) do not make the world model's {world.token_dim} channels"
        )
    pred = world.rollout(
        with_actions(context, context_actions),
        context_times,
        future_times,
        samples=samples,
        generator=generator,
        noise=noise,
        feedback=action_feedback(future_actions, samples),
    )
    return pred[..., :-a]


def action_futures(
    world: DeltaWorld,
    space: DeltaTokens | PatchTokens,
    context_feats: torch.Tensor,
    context_times: torch.Tensor,
    future_times: torch.Tensor,
    *,
    context_actions: torch.Tensor,
    future_actions: torch.Tensor,
    grid: tuple[int, int],
    black: torch.Tensor,
    samples: int,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sampling.sample_futures` for an action world model (`load_world`'s metadata["action_dim"]
    > 0): M futures of context features (B, Tc, N, D) under the actions of `action_rollout`.
    Returns tokens (B, M, H, K, C) and features (B, M, H, N, D)."""
    predict = partial(
        action_rollout,
        world,
        context_actions=context_actions,
        future_actions=future_actions,
        samples=samples,
        generator=generator,
        noise=noise,
    )
    return token_futures(predict, space, context_feats, context_times, future_times, grid=grid, black=black)


def action_forecaster(
    world: DeltaWorld,
    space: DeltaTokens | PatchTokens,
    actions: torch.Tensor,
    given: torch.Tensor,
    *,
    samples: int,
    name: str,
    generator: torch.Generator | None = None,
) -> Method:
    """A validation method over `forecast_cases` of clips whose frames took `actions` (B, T, A): the
    future is rolled out under `given` (B, T, A) from the last context frame's action on (the ones
    that drive the future frames), the true actions before it."""

    def method(case: ForecastCase) -> dict[str, torch.Tensor]:
        # forecast_cases ends every case's future at the clip's last frame
        t, h, c = actions.shape[1], case.future_times.shape[1], case.context_times.shape[1]
        start, drive = t - h - c, t - h - 1  # the first context frame; the last, whose action drives the future
        predict = partial(
            action_rollout,
            world,
            context_actions=torch.cat((actions[:, start:drive], given[:, drive : t - h]), 1),
            future_actions=given[:, t - h :],
            samples=samples,
            generator=generator,
        )
        return token_forecaster(predict, space, name=name)(case)

    return method


def checked_actions(batch: dict, action_dim: int) -> torch.Tensor:
    """A batch's per-frame actions (B, T, A), refused unless present with `action_dim` channels."""
    if "actions" not in batch:
        raise ValueError("an action world model needs batches with 'actions' (B, T, A): use data=actions")
    actions = batch["actions"]
    if actions.shape[-1] != action_dim:
        raise ValueError(f"batch actions have {actions.shape[-1]} channels, the model was built for {action_dim}")
    return actions


class WorldModule(FrozenBackboneModule):
    """Best-of-N teacher forcing over clips of T frames (tokens from the frames, or from a token
    cache when the datamodule provides batches with "tokens").

    action_dim A > 0: batches carry "actions" (B, T, A), appended to the tokens; the loss scales
    the action channels by `action_weight` (0 = conditioning only) and validation rolls out under
    the true actions and under another clip's (`deltaworld_shuffled_actions`): a model that uses
    its actions has the lower feature loss with the true ones.
    """

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
        action_dim: int = 0,
        action_weight: float = 0.1,
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
        if action_dim < 0:
            raise ValueError(f"action_dim must be >= 0 (0 = no actions), got {action_dim}")
        self.world = build_world(
            world, self.space, num_patches=grid[0] * grid[1], feature_dim=self.backbone.dim, action_dim=action_dim
        )
        if self.world.deterministic and num_hypotheses != 1:
            raise ValueError(f"a deterministic world model trains with num_hypotheses=1, got {num_hypotheses}")
        if compile:
            compile_blocks(self.world, PredictorBlock)
        self.criterion = feature_loss(loss, beta=loss_beta)
        if action_dim:
            self.criterion = channel_weighted(self.criterion, self.world.token_dim - action_dim, action_weight)

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
        if self.hparams.action_dim:  # its cache must carry the clips' actions (older caches hold none)
            fingerprint["actions"] = self.hparams.action_dim
        return self.encode_frames, fingerprint

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        tokens = batch["tokens"] if "tokens" in batch else self.encode_frames(batch["frames"])  # (B, T, K, C)
        if self.hparams.action_dim:
            tokens = with_actions(tokens, checked_actions(batch, self.hparams.action_dim))  # (B, T, K, C + A)
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
        methods = [copy_last, *self.world_methods(batch, batch_idx, samples)]
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

    def world_methods(self, batch: dict, batch_idx: int, samples: int) -> list[Method]:
        """The world model's validation methods: plain rollouts, or rollouts under the true and under
        another clip's actions (its own negated when the batch holds one clip), each from the same draws."""
        generator = partial(step_generator, self.hparams.seed, batch_idx, self.device)
        if not self.hparams.action_dim:
            return [world_forecaster(self.world, self.space, samples=samples, generator=generator())]
        actions = checked_actions(batch, self.hparams.action_dim)
        other = actions.roll(1, 0) if actions.shape[0] > 1 else -actions
        return [
            action_forecaster(self.world, self.space, actions, given, samples=samples, name=name, generator=generator())
            for name, given in (("deltaworld", actions), ("deltaworld_shuffled_actions", other))
        ]

    def exported(self) -> nn.Module:
        return world_export(self.world, self.deltatok)

    def export_metadata(self, cfg: dict) -> dict:
        """What `load_world` needs to rebuild backbone, DeltaTok, token space and DeltaWorld."""
        tokenizer_metadata = {k: self.tokenizer_metadata[k] for k in ("backbone", "tokenizer")}
        tokenizer_metadata["frame_size"] = self.frame_size
        return world_export_metadata(
            self.world,
            tokenizer_metadata=tokenizer_metadata,
            world_config=cfg["world"],
            space=self.space.name,
            action_dim=self.hparams.action_dim,
        )
