"""Frozen vision foundation model (timm) that turns uint8 frames into patch features."""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from einops import rearrange
from torch import nn

from deltaworld.tokenizer.checkpoint import checkpoint_keys, load_weights
from deltaworld.tokenizer.official import hf_dinov3_to_timm, hf_prefix

log = logging.getLogger(__name__)


class BackboneCheckpointError(RuntimeError):
    """A local backbone checkpoint does not fit the configured architecture."""


class Backbone(nn.Module):
    """Frozen per-frame feature extractor.

    frames uint8 (B, T, 3, H, W) -> features (B, T, N, D), N = (H/p)*(W/p), prefix tokens dropped.
    Frames are processed independently, so features of frame t never see later frames.
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.dim = int(model.embed_dim)
        self.num_heads = int(model.blocks[0].attn.num_heads)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        cfg = model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255, persistent=False)
        self._black: dict[tuple, torch.Tensor] = {}
        self.register_load_state_dict_post_hook(lambda module, _: module._black.clear())
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        # frozen means frozen: dropout/drop-path stay off whatever the parent module does
        return super().train(False)

    @contextmanager
    def unfrozen(self) -> Iterator[list[nn.Parameter]]:
        """Train the backbone's own weights inside this block (yields them); frozen again on exit.
        For giving a random-init demo backbone semantics, never for a pretrained VFM."""
        self.model.requires_grad_(True)
        try:
            yield list(self.model.parameters())
        finally:
            self.requires_grad_(False)
            self._black.clear()

    def grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"frame size {height}x{width} is not a multiple of the backbone patch size {p} "
                f"({self.name}); resize or crop frames to multiples of {p}"
            )
        return height // p, width // p

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.features(frames)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """`forward` with autograd left as the caller set it: only for training the backbone
        itself (`eval.train_heads.train_heads(train_backbone=True)`), which unfreezes it."""
        if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"expected uint8 frames (B, T, 3, H, W), got {tuple(frames.shape)} {frames.dtype}")
        b = frames.shape[0]
        self.grid(*frames.shape[-2:])
        x = rearrange(frames, "b t c h w -> (b t) c h w").float()
        x = (x - self.mean) / self.std
        tokens = self.model.forward_features(x)  # (B*T, prefix + N, D)
        feats = tokens[:, self.num_prefix_tokens :]
        return rearrange(feats, "(b t) n d -> b t n d", b=b)

    def black_features(self, height: int, width: int) -> torch.Tensor:
        """Features (N, D) of an all-black frame: the 'previous frame' of a clip's first frame.

        Cached per size, device and autocast state (the weights are frozen; loading new ones clears it).
        """
        key = (height, width, self.mean.device, torch.is_autocast_enabled(self.mean.device.type))
        if key not in self._black:
            black = torch.zeros(1, 1, 3, height, width, dtype=torch.uint8, device=self.mean.device)
            self._black[key] = self(black)[0, 0]
        return self._black[key]


def build_backbone(
    *,
    name: str = "vit_small_patch14_dinov2",
    pretrained: bool = False,
    checkpoint: str | None = None,
    img_size: int | None = None,
    arch: dict | None = None,
    init_seed: int = 0,
) -> Backbone:
    """Create a frozen timm VFM.

    Weights come from the hub (`pretrained=True`), a local `.safetensors`/`.pth` file
    (`checkpoint`: timm layout, position embeddings resampled to `img_size`; or a Hugging Face
    DINOv3 file, converted), or random init with a warning.
    `arch` overrides timm architecture arguments (e.g. a depth-2, width-64 model for tests).
    """
    kwargs = dict(num_classes=0, dynamic_img_size=True, **(arch or {}))
    if img_size is not None:
        kwargs["img_size"] = img_size
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"backbone checkpoint not found: {path}")
        try:
            if hf_prefix(checkpoint_keys(path)) is not None:
                # Hugging Face DINOv3 layout (what the reference implementation loads): convert
                with torch.random.fork_rng(devices=[]):
                    model = timm.create_model(name, pretrained=False, **kwargs)
                model.load_state_dict(hf_dinov3_to_timm(load_weights(path), model, source=str(path)))
            else:
                model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except (RuntimeError, KeyError, ValueError) as err:
            raise BackboneCheckpointError(
                f"backbone checkpoint {path} does not fit architecture '{name}' {arch or ''}: "
                f"{' '.join(str(err).split())[:600]}"
            ) from err
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        if not pretrained:
            msg = (
                f"backbone '{name}' is RANDOMLY INITIALISED: its features carry no pretrained "
                "semantics (fine for tests and smoke runs; set backbone.pretrained=true or "
                "backbone.checkpoint=<file> for real work)"
            )
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
    return Backbone(model, name)
