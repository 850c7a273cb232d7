"""Token spaces a world model can live in: DeltaTok delta tokens, or raw patch features.

Both map a clip's features to tokens (B, T, K, C) and predicted tokens back to features, so the
world model, its training and its evaluation are the same code for DeltaWorld (K = 1 token per
frame) and for the patch-token baseline (K = N patch tokens per frame, the "1,024x" comparison).
"""

import torch

from deltaworld.tokenizer.deltatok import DeltaTok


class DeltaTokens:
    name = "delta"

    def __init__(self, deltatok: DeltaTok) -> None:
        self.deltatok = deltatok

    def shape(self, num_patches: int, feature_dim: int) -> tuple[int, int]:
        """(K tokens per frame, C channels per token)."""
        return self.deltatok.num_tokens, self.deltatok.token_dim

    def encode(self, feats: torch.Tensor, grid: tuple[int, int], black: torch.Tensor) -> torch.Tensor:
        """feats (B, T, N, D) -> tokens (B, T, K, C); the first frame is coded against black (N, D)."""
        return self.deltatok.tokenize(feats, grid, black)

    def decode(self, tokens: torch.Tensor, grid: tuple[int, int], last: torch.Tensor) -> torch.Tensor:
        """tokens (B, H, K, C) following features last (B, N, D) -> features (B, H, N, D), closed loop."""
        return self.deltatok.decode_rollout(tokens, grid, last)


class PatchTokens:
    name = "patches"

    def shape(self, num_patches: int, feature_dim: int) -> tuple[int, int]:
        return num_patches, feature_dim

    def encode(self, feats: torch.Tensor, grid: tuple[int, int], black: torch.Tensor) -> torch.Tensor:
        return feats

    def decode(self, tokens: torch.Tensor, grid: tuple[int, int], last: torch.Tensor) -> torch.Tensor:
        return tokens


def build_space(name: str, deltatok: DeltaTok) -> DeltaTokens | PatchTokens:
    if name == DeltaTokens.name:
        return DeltaTokens(deltatok)
    if name == PatchTokens.name:
        return PatchTokens()
    raise ValueError(f"unknown token space '{name}': use '{DeltaTokens.name}' or '{PatchTokens.name}'")
