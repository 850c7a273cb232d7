"""LightningModule that trains DeltaTok on frozen backbone features."""

import math
from collections.abc import Callable, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from deltaworld.tokenizer.backbone import Backbone
from deltaworld.tokenizer.blocks import Block
from deltaworld.tokenizer.deltatok import DeltaTok
from deltaworld.tokenizer.losses import feature_loss
from deltaworld.tokenizer.training import compile_blocks, configure_adamw, step_generator


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
    """Base for stages that train on top of a frozen backbone.

    The backbone is never written to checkpoints (it is reproducible from its own config and
    weights file) and is re-filled from the live module on load.
    """

    frozen_modules: tuple[str, ...] = ("backbone",)

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
        loss: str = "log_cosh",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        warmup_steps: int = 5000,
        betas: Sequence[float] = (0.9, 0.999),
        rope_rescale: float = 2.0,
        train_first_frame: bool = False,
        eval_horizons: Sequence[int] = (1, 3),
        seed: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "deltatok"])
        self.backbone = backbone
        if not isinstance(deltatok, nn.Module):  # a Hydra partial: width comes from the backbone
            deltatok = deltatok(dim=backbone.dim, num_heads=backbone.num_heads)
        self.deltatok = deltatok
        if compile:
            compile_blocks(deltatok, Block)
        self.criterion = feature_loss(loss)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        return configure_adamw(
            self.deltatok, lr=hp.lr, weight_decay=hp.weight_decay,
            warmup_steps=hp.warmup_steps, betas=hp.betas,
        )

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
        return {"backbone": cfg["backbone"], "tokenizer": cfg["tokenizer"], "frame_size": cfg["frame_size"]}
