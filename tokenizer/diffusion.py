"""The pixel DeltaToken's diffusion decoder: a conditional rectified-flow denoiser over pixel patches.

It models what the deterministic decoder cannot: the residual r = frame - deterministic output,
given that output and the frame's delta tokens. The deterministic output is a conditional mean
(blurry where the tokens leave the frame uncertain); the denoiser samples plausible detail instead
of an adversarial loss sharpening it.

Why flow matching rather than DDPM: the straight noise-to-data paths of rectified flow make a few
Euler steps (4 by default) usable without a distilled sampler or a tuned noise schedule, the loss
is a plain velocity regression, and the sampler is a deterministic ODE once the initial noise is
drawn, so a seed fixes the sample.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.blocks import Block, init_linear_weights
from tokenizer.rope import patch_rope_2d


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features (B, dim) of flow times t (B,) in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs  # (B, dim/2)
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class PatchDenoiser(nn.Module):
    """velocity(x_t, t | deterministic patches, tokens): a transformer over [tokens | patches]."""

    def __init__(
        self,
        *,
        patch_dim: int,
        token_dim: int,
        dim: int = 256,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1e-5,
        residual_scale: float = 0.1,
        rope_theta: float = 100.0,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.dim, self.num_heads, self.rope_theta = dim, num_heads, rope_theta
        # residuals of a trained deterministic decoder are small: scale them to about unit variance
        self.residual_scale = residual_scale
        self.in_proj = nn.Linear(2 * patch_dim, dim)  # [noisy residual | deterministic patch]
        self.token_proj = nn.Linear(token_dim, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, patch_dim))
        init_linear_weights(self, std=init_std)
        nn.init.zeros_(self.out[1].weight)  # starts at velocity 0: the sample is the noise mean, det
        nn.init.zeros_(self.out[1].bias)

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, det: torch.Tensor, tokens: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """x, det (B, N, P); t (B,); tokens (B, K, C) -> velocity (B, N, P)."""
        h = torch.cat((self.token_proj(tokens), self.in_proj(torch.cat((x, det), -1))), dim=1)  # (B, K+N, dim)
        h = h + self.time_mlp(timestep_embedding(t, self.dim).to(h.dtype))[:, None]
        rope = patch_rope_2d(grid, self.dim // self.num_heads, theta=self.rope_theta, device=x.device)
        for block in self.blocks:
            h = block(h, rope)  # the K token entries stay unrotated (leading positions)
        return self.out(h[:, tokens.shape[1] :])

    def loss(
        self,
        target: torch.Tensor,
        det: torch.Tensor,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss: target, det patches (B, N, P), tokens (B, K, C) -> scalar.

        x_t = (1 - t) noise + t r, t ~ U(0, 1); the network regresses the velocity r - noise."""
        data = (target - det).float() / self.residual_scale
        noise = torch.randn(data.shape, generator=generator, device=data.device)
        t = torch.rand(data.shape[0], generator=generator, device=data.device)
        x = (1 - t[:, None, None]) * noise + t[:, None, None] * data
        v = self.velocity(x, t, det, tokens, grid)
        return F.mse_loss(v.float(), data - noise)

    @torch.no_grad()
    def sample(
        self,
        det: torch.Tensor,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        *,
        steps: int = 4,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """det patches (B, N, P) + tokens -> sampled patches; `steps` Euler steps from t = 0 to 1."""
        if steps < 1:
            raise ValueError(f"diffusion sampling needs steps >= 1, got {steps}")
        x = torch.randn(det.shape, generator=generator, device=det.device)
        for i in range(steps):
            t = torch.full((det.shape[0],), i / steps, device=det.device)
            x = x + self.velocity(x, t, det, tokens, grid).float() / steps
        return det + self.residual_scale * x.to(det.dtype)
