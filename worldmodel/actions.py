"""Action-conditioned DeltaWorld on pixel DeltaToken tokens: joint video + action modelling.

Each frame's action vector a_t (taken at frame t, driving frame t + 1) is concatenated to every one
of its K tokens along the channel dimension, so the world model is an unchanged DeltaWorld over
tokens of C + A channels: it predicts the next frame's video *and* action channels (joint
generation). Conditioning on given actions writes them into the action channels of each predicted
frame before it becomes context (`DeltaWorld.rollout(feedback=...)`).
"""

import os
from collections.abc import Callable

import torch
from einops import repeat
from torch import nn

from deltaworld.tokenizer.checkpoint import load_weights, read_metadata, strip_prefix
from deltaworld.tokenizer.losses import feature_loss
from deltaworld.tokenizer.module import (
    FACTORY_ARGS,
    FrozenBackboneModule,
    OptimizerFactory,
    SchedulerFactory,
)
from deltaworld.tokenizer.pixel import PixelDeltaToken, load_pixel_tokenizer, to_unit
from deltaworld.tokenizer.pixel_metrics import psnr_per_frame
from deltaworld.tokenizer.schema import SchemaError, checked_config, checked_field, expect_kind, stamp
from deltaworld.tokenizer.training import compile_blocks, step_generator
from deltaworld.worldmodel.checkpoint import WORLD
from deltaworld.worldmodel.deltaworld import DeltaWorld, LossFn
from deltaworld.worldmodel.predictor import PredictorBlock


def with_actions(tokens: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """tokens (B, T, K, C), actions (B, T, A) -> (B, T, K, C + A): the action on each of the K tokens."""
    return torch.cat((tokens, repeat(actions.to(tokens.dtype), "b t a -> b t k a", k=tokens.shape[2])), dim=-1)


def channel_weighted(loss_fn: LossFn, token_dim: int, action_weight: float) -> LossFn:
    """An elementwise loss with the action channels (after the first `token_dim`) scaled by
    `action_weight`: 0 = conditioning only, > 0 = the model also learns to predict actions."""

    def weighted(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(pred, target)
        weights = torch.ones(loss.shape[-1], device=loss.device, dtype=loss.dtype)
        weights[token_dim:] = action_weight
        return loss * weights

    return weighted


def action_feedback(actions: torch.Tensor, samples: int) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """For `DeltaWorld.rollout`: given future actions (B, H, A), overwrite the action channels of
    step h's prediction (B*M, 1, K, C + A) with actions[:, h] (hypotheses batch-major)."""
    a = actions.shape[-1]
    per_row = actions.repeat_interleave(samples, dim=0)  # (B*M, H, A)

    def feedback(step: int, pred: torch.Tensor) -> torch.Tensor:
        given = repeat(per_row[:, step].to(pred.dtype), "r a -> r 1 k a", k=pred.shape[2])
        return torch.cat((pred[..., :-a], given), dim=-1)

    return feedback


def split_actions(past: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The actions of a rollout from the context's end: past (B, Tc - 1, A), taken at the context
    frames before the last, and actions (B, H, A) from the last context frame on (row 0 drives the
    first predicted frame) -> the context's (B, Tc, A) and the predicted frames' (B, H, A). The last
    predicted frame's action drives no frame within the horizon: its slot repeats the last given."""
    return torch.cat((past, actions[:, :1]), 1), torch.cat((actions[:, 1:], actions[:, -1:]), 1)


@torch.no_grad()
def sample_action_futures(
    world: DeltaWorld,
    tokenizer: PixelDeltaToken,
    frames: torch.Tensor,
    times: torch.Tensor,
    actions: torch.Tensor,
    future_times: torch.Tensor,
    *,
    future_actions: torch.Tensor | None = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Future frames (B, M, H, 3, H, W) in [-1, 1] after context frames (B, Tc, 3, H, W) in
    [-1, 1] with their actions (B, Tc, A), at future_times (B, H). With future_actions (B, H, A)
    the rollout is conditioned on them; without, the model samples the actions too."""
    tokens, recon = tokenizer.encode_video(frames)
    _, futures = rollout_frames(
        world,
        tokenizer,
        tokenizer.frame_tokens(tokens),
        recon[:, -1],
        times,
        actions,
        future_times,
        future_actions=future_actions,
        samples=samples,
        generator=generator,
    )
    return futures


@torch.no_grad()
def rollout_frames(
    world: DeltaWorld,
    tokenizer: PixelDeltaToken,
    tokens: torch.Tensor,
    last: torch.Tensor,
    times: torch.Tensor,
    actions: torch.Tensor,
    future_times: torch.Tensor,
    *,
    future_actions: torch.Tensor | None = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_action_futures` from an encoded context: frame tokens (B, Tc, K, C) and the last
    context frame's reconstruction (B, 3, H, W), so a context coded once serves many action
    sequences (a planner's candidates); noise (B, M, H, dim) overrides the rollout's draws.
    Returns the predicted tokens (B, M, H, K, C + A) and frames (B, M, H, 3, H, W) in [-1, 1]."""
    context = with_actions(tokens, actions)
    feedback = None if future_actions is None else action_feedback(future_actions, samples)
    pred = world.rollout(
        context, times, future_times, samples=samples, generator=generator, noise=noise, feedback=feedback
    )
    b, m, h = pred.shape[:3]
    video = pred[..., : tokenizer.token_dim].flatten(0, 1)  # (B*M, H, K, C)
    out = tokenizer.decode_video(video, last.shape[-2:], start=tokens.shape[1], prev=last.repeat_interleave(m, dim=0))
    return pred, out.unflatten(0, (b, m))


class ActionWorldModule(FrozenBackboneModule):
    """Best-of-N DeltaWorld training on a frozen pixel DeltaToken's tokens + per-frame actions
    (batches carry "actions" (B, T, A), e.g. from `data.actions.ActionSource`). Validation rolls
    out the future with the true actions and with another clip's actions and logs both PSNRs:
    a model that uses its actions scores higher with the true ones."""

    frozen_modules = ("tokenizer",)  # eval mode and left out of checkpoints, as a frozen backbone

    def __init__(
        self,
        *,
        tokenizer_ckpt: str,
        world: DeltaWorld | Callable[..., DeltaWorld],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        action_dim: int = 2,
        action_weight: float = 0.1,
        num_hypotheses: int = 16,
        eval_samples: int = 4,
        loss: str = "smooth_l1",
        loss_beta: float = 0.1,
        eval_context: int = 3,
        seed: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer=optimizer, scheduler=scheduler)
        self.save_hyperparameters(ignore=["world", *FACTORY_ARGS])
        if tokenizer_ckpt is None:
            raise ValueError(
                "the action world model needs a pixel tokenizer: pass tokenizer_ckpt=<tokenizer.safetensors>"
            )
        self.tokenizer, self.tokenizer_metadata = load_pixel_tokenizer(tokenizer_ckpt)
        tok = self.tokenizer
        if not tok.uniform:
            raise ValueError(
                f"{tokenizer_ckpt}: key frames carry {tok.key_tokens} tokens, other frames {tok.num_tokens}; "
                "DeltaWorld needs K tokens on every frame (train the tokenizer with tokenizer.key_tokens=null)"
            )
        if not isinstance(world, nn.Module):
            world = world(token_dim=tok.token_dim + action_dim, tokens_per_frame=tok.num_tokens)
        self.world = world
        if compile:
            compile_blocks(self.world, PredictorBlock)
        self.criterion = channel_weighted(feature_loss(loss, beta=loss_beta), tok.token_dim, action_weight)

    def trainable(self) -> DeltaWorld:
        return self.world

    def batch_actions(self, batch: dict) -> torch.Tensor:
        if "actions" not in batch:
            raise ValueError("the action world model needs batches with 'actions' (B, T, A): use data=actions")
        actions = batch["actions"]
        if actions.shape[-1] != self.hparams.action_dim:
            raise ValueError(
                f"batch actions have {actions.shape[-1]} channels, "
                f"the model was built for action_dim={self.hparams.action_dim}"
            )
        return actions

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            tokens = self.tokenizer.frame_tokens(self.tokenizer.encode_video(to_unit(batch["frames"]))[0])
        loss, stats = self.world.teacher_forced_loss(
            with_actions(tokens, self.batch_actions(batch)),
            batch["timestamps"].float(),
            num_hypotheses=self.hparams.num_hypotheses,
            loss_fn=self.criterion,
            generator=step_generator(self.hparams.seed, self.global_step, self.device),
        )
        b = tokens.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for name, value in stats.items():
            self.log(f"train/{name}", value, batch_size=b)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, times, actions = to_unit(batch["frames"]), batch["timestamps"].float(), self.batch_actions(batch)
        c = self.hparams.eval_context
        if x.shape[1] <= c:
            raise ValueError(f"validation clips of {x.shape[1]} frames leave no future after {c} context frames")
        # another clip's actions (its own negated when the batch holds one clip)
        other = actions.roll(1, 0) if actions.shape[0] > 1 else -actions
        truth, b = x[:, c:], x.shape[0]
        for name, future_actions in (("true_actions", actions), ("shuffled_actions", other)):
            futures = sample_action_futures(
                self.world,
                self.tokenizer,
                x[:, :c],
                times[:, :c],
                actions[:, :c],
                times[:, c:],
                future_actions=future_actions[:, c:],
                samples=self.hparams.eval_samples,
                generator=step_generator(self.hparams.seed, batch_idx, self.device),
            )
            psnr = psnr_per_frame(futures, truth[:, None].expand_as(futures))  # (B, M, H)
            self.log(f"val/psnr_{name}", psnr.mean(), batch_size=b)
        self.log("val/psnr_copy_last", psnr_per_frame(x[:, c - 1 : c].expand_as(truth), truth).mean(), batch_size=b)

    def exported(self) -> nn.Module:
        return nn.ModuleDict({"world": self.world, "tokenizer": self.tokenizer})

    def export_metadata(self, cfg: dict) -> dict:
        """A pixel world export: `load_pixel_tokenizer` reads its tokenizer; the world config and token shape."""
        return stamp(
            "pixel_world",
            {
                "tokenizer": self.tokenizer_metadata["tokenizer"],
                "frame_size": cfg["frame_size"],  # the size this stage trained at (the codec is resolution-free)
                "world": cfg["world"],
                "token_shape": [self.world.tokens_per_frame, self.world.token_dim],
                "action_dim": self.hparams.action_dim,
            },
        )


def load_pixel_world(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[DeltaWorld, PixelDeltaToken, dict]:
    """Frozen (world model, pixel tokenizer, metadata) from the export `ActionWorldModule` writes
    (kind `pixel_world`), every config checked before anything is built; metadata["action_dim"]
    says how many of the world's token channels are the action."""
    meta = read_metadata(path)
    expect_kind(
        path, meta, ("pixel_world",), "deltaworld train experiment=pixel_world_actions_cpu tokenizer_ckpt=<file>"
    )
    world_args = checked_config(path, meta, "world", WORLD)
    tokens_per_frame, token_dim = checked_field(path, meta, "token_shape", tuple[int, int])
    action_dim = checked_field(path, meta, "action_dim", int)
    checked_field(path, meta, "frame_size", int)
    tokenizer, _ = load_pixel_tokenizer(path, device)
    if (tokens_per_frame, token_dim) != (tokenizer.num_tokens, tokenizer.token_dim + action_dim) or action_dim < 1:
        raise SchemaError(
            f"{path}: token_shape {[tokens_per_frame, token_dim]} does not fit its tokenizer "
            f"({tokenizer.num_tokens} tokens of {tokenizer.token_dim} channels) + action_dim={action_dim}"
        )
    world = WORLD.fn(**world_args, token_dim=token_dim, tokens_per_frame=tokens_per_frame)
    world.load_state_dict(strip_prefix(load_weights(path), "world."))
    return world.requires_grad_(False).eval().to(device), tokenizer, meta
