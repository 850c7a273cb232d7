"""LightningModule that trains DeltaTok on frozen backbone features."""

import logging
import math
import os
from collections.abc import Callable, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from deltaworld.tokenizer.backbone import Backbone
from deltaworld.tokenizer.blocks import Block
from deltaworld.tokenizer.checkpoint import load_weights, strip_prefix
from deltaworld.tokenizer.deltatok import DeltaTok
from deltaworld.tokenizer.losses import feature_loss
from deltaworld.tokenizer.schema import stamp
from deltaworld.tokenizer.training import (
    check_state_dict,
    compile_blocks,
    param_groups,
    step_generator,
)

log = logging.getLogger(__name__)

# What every stage's `optimizer` and `scheduler` arguments are: Hydra partials (conf/optimizer/,
# conf/scheduler/) that the base completes with the stage's parameter groups and optimizer.
OptimizerFactory = Callable[[list[dict]], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]
# arguments no stage saves as hyperparameters: partials are not plain data, and checkpoints must load
# with torch.load(weights_only=True); the run's config.yaml records them
FACTORY_ARGS = ("optimizer", "scheduler")


def to_plain(obj):
    """OmegaConf containers and tuples -> plain dicts and lists (recursively)."""
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj


class FrozenBackboneModule(L.LightningModule):
    """Base of every training stage: one submodule (`trainable()`) trains on top of frozen ones.

    The frozen modules are never written to checkpoints (they are reproducible from their own config
    and weights file) and are re-filled from the live module on load. The optimizer (weight decay
    on weight matrices only) and its per-step schedule are built here for every stage, from the
    `optimizer` and `scheduler` partials, and `load_initial_weights` starts a fine-tune.
    """

    frozen_modules: tuple[str, ...] = ("backbone",)

    def __init__(self, *, optimizer: OptimizerFactory, scheduler: SchedulerFactory) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def trainable(self) -> nn.Module:
        """The submodule this stage trains: the only parameters the optimizer sees, and what
        `init_from` fills."""
        raise NotImplementedError

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(param_groups(self.trainable()))
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def load_initial_weights(self, path: str | os.PathLike) -> None:
        """Fine-tune from `path` (`init_from=`): fill `trainable()` from a Lightning .ckpt or an export,
        strictly (a ValueError names the file and lists missing/unexpected keys and shape mismatches).
        Only the file's tensors are read. The run itself starts fresh: step 0, new optimizer and schedule.

        Where the weights sit: under `<attribute>.` (e.g. `deltatok.`, `world.`, `tokenizer.`) in a
        .ckpt and in an export that bundles several modules (a world export carries `world.` and
        `deltatok.`, a pixel world export `world.` and `tokenizer.`); at the top level in an export of
        this module alone (a tokenizer export). So a world export also fine-tunes the tokenizer stage.

        Frame size may change: DeltaTok's, DeltaWorld's and the pixel codec's positions are RoPE
        coordinates (no learned position table), so their weights load at any frame size unchanged; the
        frozen backbone resamples its own position embeddings and comes from its own config, not from
        here. (The `patches` token space has one learned slot per patch: its world model fits one grid.)
        """
        module = self.trainable()
        name = next(n for n, child in self.named_children() if child is module)
        weights = load_weights(path)
        prefix = f"{name}."
        if any(k.startswith(prefix) for k in weights):
            for frozen in self.frozen_modules:  # weights trained on other frozen parts start far off
                stored = strip_prefix(weights, f"{frozen}.")
                live = getattr(self, frozen).state_dict()
                if stored and any(k not in live or not torch.equal(v, live[k]) for k, v in stored.items()):
                    log.warning("init_from %s: its %s differs from this run's (frozen) one", path, frozen)
            weights = strip_prefix(weights, prefix)
        check_state_dict(module, weights, source=str(path))
        module.load_state_dict(weights)
        log.info("init_from %s: %s weights loaded; fresh optimizer and schedule from step 0", path, name)

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        return tuple(f"{name}." for name in self.frozen_modules)

    def train(self, mode: bool = True) -> "FrozenBackboneModule":
        super().train(mode)
        for name in self.frozen_modules:  # frozen means frozen: no dropout, no norm-stat updates
            getattr(self, name).eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # plain containers only, so the checkpoint loads with torch.load(weights_only=True)
        checkpoint["hyper_parameters"] = to_plain(checkpoint.get("hyper_parameters", {}))
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(self.frozen_prefixes)]:
            del state[key]

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        full = {k: v for k, v in self.state_dict().items() if k.startswith(self.frozen_prefixes)}
        full.update(state_dict)
        return super().load_state_dict(full, strict=strict, assign=assign)


class TokenizerModule(FrozenBackboneModule):
    def __init__(
        self,
        *,
        backbone: Backbone,
        deltatok: DeltaTok | Callable[..., DeltaTok],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        loss: str = "log_cosh",
        rope_rescale: float = 2.0,
        train_first_frame: bool = False,
        eval_horizons: Sequence[int] = (1, 3),
        seed: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer=optimizer, scheduler=scheduler)
        self.save_hyperparameters(ignore=["backbone", "deltatok", *FACTORY_ARGS])
        self.backbone = backbone
        if not isinstance(deltatok, nn.Module):  # a Hydra partial: width comes from the backbone
            deltatok = deltatok(dim=backbone.dim, num_heads=backbone.num_heads)
        self.deltatok = deltatok
        if compile:
            compile_blocks(deltatok, Block)
        self.criterion = feature_loss(loss)

    def trainable(self) -> DeltaTok:
        return self.deltatok

    def features(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
        """frames (B, T, 3, H, W) -> feats (B, T, N, D), grid, black-frame feats (N, D)."""
        h, w = frames.shape[-2:]
        return self.backbone(frames), self.backbone.grid(h, w), self.backbone.black_features(h, w)

    def _rope_scale(self) -> float:
        # log-uniform coordinate rescaling in [1/r, r]: the decoder must not overfit one grid size
        r = self.hparams.rope_rescale
        if r <= 1.0:
            return 1.0
        u = torch.rand((), generator=step_generator(self.hparams.seed, self.global_step)).item()
        return math.exp((2 * u - 1) * math.log(r))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats, grid, black = self.features(batch["frames"])
        prev = torch.cat((black.expand(feats.shape[0], 1, *black.shape), feats[:, :-1]), dim=1)
        if not self.hparams.train_first_frame:  # pairs of real frames only (as the reference)
            prev, feats = prev[:, 1:], feats[:, 1:]
        prev, cur = prev.flatten(0, 1), feats.flatten(0, 1)  # (B*T', N, D)
        scale = self._rope_scale()
        tokens = self.deltatok.encode(prev, cur, grid, rope_scale=scale)
        recon = self.deltatok.decode(tokens, prev, grid, rope_scale=scale)
        loss = self.criterion(recon.float(), cur.float()).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=cur.shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        feats, grid, _ = self.features(batch["frames"])
        b = feats.shape[0]
        for horizon in self.hparams.eval_horizons:
            if horizon >= feats.shape[1]:
                continue
            context = feats[:, -horizon - 1]
            recon = self.deltatok.reconstruct(feats[:, -horizon:], grid, context)[1][:, -1]
            target = feats[:, -1].float()
            self.log(f"val/feat_loss_h{horizon}", nn.functional.mse_loss(recon.float(), target), batch_size=b)
            self.log(f"val/copy_last_h{horizon}", nn.functional.mse_loss(context.float(), target), batch_size=b)

    def exported(self) -> nn.Module:
        return self.deltatok

    @staticmethod
    def export_metadata(cfg: dict) -> dict:
        """What `load_tokenizer` needs to rebuild backbone + DeltaTok from the exported file."""
        return stamp("tokenizer", {k: cfg[k] for k in ("backbone", "tokenizer", "frame_size")})
