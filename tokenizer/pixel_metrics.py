"""Per-frame PSNR and SSIM (torchmetrics) of frames in [-1, 1], and the token-count arithmetic of
the pixel DeltaToken against a video VAE's latent grid and raw patches."""

import math
from dataclasses import dataclass

import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)


def _unit_interval(frames: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [-1, 1] -> (M, 3, H, W) in [0, 1], float32."""
    return ((frames.float().clamp(-1, 1) + 1) / 2).reshape(-1, *frames.shape[-3:])


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target (..., 3, H, W) in [-1, 1] -> PSNR in dB per frame, shape (...)."""
    p, t = _unit_interval(pred), _unit_interval(target)
    values = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return values.reshape(pred.shape[:-3])


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target (..., 3, H, W) in [-1, 1] -> SSIM per frame, shape (...). Gaussian window 11
    (shrunk to fit frames smaller than 11 px)."""
    p, t = _unit_interval(pred), _unit_interval(target)
    kernel = min(11, *(s - 1 + s % 2 for s in p.shape[-2:]))  # odd and no larger than the frame
    values = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none", kernel_size=kernel)
    return values.reshape(pred.shape[:-3])


@dataclass(frozen=True)
class TokenBudget:
    """Token counts of a clip of `frames` frames of height x width at `fps`."""

    delta_tokens: int  # the pixel DeltaToken's 1D sequence length (key frames included)
    token_dim: int
    vae_tokens: int  # latent grid of a video VAE: 8x spatial, 4x temporal downsampling
    patch_tokens: int  # raw p x p patches of every frame
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.delta_tokens / self.seconds

    @property
    def vs_vae(self) -> float:
        return self.vae_tokens / self.delta_tokens

    @property
    def vs_patches(self) -> float:
        return self.patch_tokens / self.delta_tokens


def token_budget(
    token_counts: list[int],
    *,
    token_dim: int,
    height: int,
    width: int,
    fps: float,
    patch_size: int,
    vae_spatial: int = 8,
    vae_temporal: int = 4,
) -> TokenBudget:
    """The reduction factors the issue asks for. A VAE latent position (16 channels, as our tokens)
    counts as one token: ceil(T / 4) * (H / 8) * (W / 8); raw patches: T * (H / p) * (W / p)."""
    frames = len(token_counts)
    vae = math.ceil(frames / vae_temporal) * math.ceil(height / vae_spatial) * math.ceil(width / vae_spatial)
    patches = frames * (height // patch_size) * (width // patch_size)
    return TokenBudget(sum(token_counts), token_dim, vae, patches, frames / fps)
