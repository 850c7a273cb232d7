"""PCA feature maps: project patch features to RGB with one projection shared by all maps."""

import torch
from einops import rearrange


class PCAProjection:
    """Fit on reference features (..., D); map any features of the same space to [0, 1] RGB."""

    def __init__(self, reference: torch.Tensor, components: int = 3) -> None:
        flat = reference.reshape(-1, reference.shape[-1]).float()
        self.mean = flat.mean(0)
        _, _, v = torch.linalg.svd(flat - self.mean, full_matrices=False)
        self.basis = v[:components].T  # (D, 3)
        proj = (flat - self.mean) @ self.basis
        # robust range from the reference, so predictions are shown on the same colour scale
        self.low = proj.quantile(0.01, dim=0)
        self.high = proj.quantile(0.99, dim=0)

    def __call__(self, feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """feats (..., N, D) -> images (..., h, w, 3) in [0, 1]."""
        proj = (feats.float() - self.mean) @ self.basis
        rgb = ((proj - self.low) / (self.high - self.low).clamp_min(1e-6)).clamp(0, 1)
        return rearrange(rgb, "... (h w) c -> ... h w c", h=grid[0], w=grid[1])
