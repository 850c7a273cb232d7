"""Rotary position embeddings: 2D on the patch grid (DINOv3 convention) and 1D on real time.

Both produce (cos, sin) tables of the full rotated width and share `apply_rope`, which pairs
channel i with channel i + width/2 (the "rotate half" convention).
"""

import math

import torch


def rotate_half(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the last `cos.shape[-2]` tokens of `t` (..., L, d); leading tokens stay unrotated.

    cos/sin: (L_rot, d) or broadcastable to t's trailing (L_rot, d). Computed in float32.
    """
    num_rot = cos.shape[-2]
    lead, rot = t[..., : t.shape[-2] - num_rot, :], t[..., t.shape[-2] - num_rot :, :]
    rotated = (rot.float() * cos + rotate_half(rot.float()) * sin).to(t.dtype)
    return torch.cat((lead, rotated), dim=-2) if lead.shape[-2] else rotated


def patch_rope_2d(
    grid: tuple[int, int],
    head_dim: int,
    *,
    theta: float = 100.0,
    scale: float = 1.0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) each (h*w, head_dim) for a row-major patch grid.

    Patch centres are normalised to [-1, 1] so the same weights work at any resolution; `scale`
    multiplies the coordinates (training-time augmentation, 1.0 at evaluation).
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    h, w = grid
    inv_freq = theta ** (-torch.arange(head_dim // 4, device=device, dtype=torch.float32) * 4 / head_dim)
    ys = (2 * (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h - 1) * scale
    xs = (2 * (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w - 1) * scale
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w)
    coords = torch.stack((yy.flatten(), xx.flatten()), dim=-1)  # (N, 2)
    angles = 2 * math.pi * coords[:, :, None] * inv_freq  # (N, 2, hd/4)
    half = angles.flatten(1)  # (N, hd/2): [y angles, x angles]
    table = torch.cat((half, half), dim=-1)  # (N, hd)
    return table.cos(), table.sin()


def time_rope(
    timestamps: torch.Tensor,
    rotated_dim: int,
    *,
    min_log_freq: float = -2.0,
    max_log_freq: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) each (..., L, rotated_dim) for timestamps (..., L) in seconds.

    Frequencies span 10**max_log_freq .. 10**min_log_freq cycles per second (log-spaced), so
    both sub-frame jitter and multi-second context are resolvable.
    """
    if rotated_dim % 2:
        raise ValueError(f"time RoPE needs an even rotated width, got {rotated_dim}")
    log_freqs = torch.linspace(min_log_freq, max_log_freq, rotated_dim // 2, device=timestamps.device)
    inv_freq = 1.0 / 10.0**log_freqs  # (A/2,)
    angles = 2 * math.pi * timestamps.float()[..., None] * inv_freq  # (..., L, A/2)
    table = torch.cat((angles, angles), dim=-1)
    return table.cos(), table.sin()
