"""DeltaWorld predictor: query tokens cross-attend to past delta tokens, with RoPE on real time.

Each head's channels are [A rotated by time | U unrotated]: the rotated part makes attention depend
on time differences in seconds (irregular frame gaps are first-class), the unrotated part lets a
query match content regardless of when it happened.
"""

import torch
from einops import rearrange
from torch import nn

from deltaworld.tokenizer.attention import attention
from deltaworld.tokenizer.blocks import GeluMlp, LayerScale, init_linear_weights
from deltaworld.tokenizer.rope import apply_rope, time_rope

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per block: k, v (B, H, L, d), k already rotated


def causal_mask(q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
    """Additive (1, 1, Lq, Lk) mask: query i sees key j only if k_index[j] < q_index[i]."""
    blocked = k_index[None, :] >= q_index[:, None]
    return torch.zeros(blocked.shape, device=q_index.device).masked_fill(blocked, float("-inf"))[None, None]


def rotate_leading_channels(t: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Apply RoPE to the first A channels of each head of t (B, H, L, d); cos/sin (B, L, A)."""
    cos, sin = (r[:, None] for r in rope)  # broadcast over heads
    a = cos.shape[-1]
    return torch.cat((apply_rope(t[..., :a], cos, sin), t[..., a:]), dim=-1)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(context_dim, 2 * dim)  # rows [0, dim) -> k, [dim, 2 dim) -> v
        self.out_proj = nn.Linear(dim, dim)

    def project_context(
        self, context: torch.Tensor, rope_k: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """context (B, L, Dc) -> rotated k and v, each (B, H, L, d): what a KV cache stores."""
        k, v = rearrange(self.kv_proj(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        return rotate_leading_channels(k, rope_k), v

    def forward(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rope_q: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        q = rearrange(self.q_proj(x), "b l (h d) -> b h l d", h=self.num_heads)
        out = attention(rotate_leading_channels(q, rope_q), k, v, mask)
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))


class PredictorBlock(nn.Module):
    def __init__(
        self, dim: int, context_dim: int, num_heads: int, *, mlp_ratio: float, layer_scale_init: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CrossAttention(dim, context_dim, num_heads)
        self.layer_scale1 = LayerScale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = GeluMlp(dim, int(dim * mlp_ratio))
        self.layer_scale2 = LayerScale(dim, layer_scale_init)

    def forward(self, x, k, v, rope_q, mask) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x), k, v, rope_q, mask))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Predictor(nn.Module):
    """queries (B, Lq, dim) at times pos_q, context tokens (B, Lk, context_dim) at times pos_k
    -> predicted tokens (B, Lq, context_dim)."""

    def __init__(
        self,
        *,
        dim: int,
        context_dim: int,
        depth: int,
        num_heads: int,
        rope_dim: int,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1e-5,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        head_dim = dim // num_heads
        if dim % num_heads or not 0 < rope_dim <= head_dim or rope_dim % 2:
            raise ValueError(
                f"need dim % heads == 0 and an even rope_dim <= head size ({dim}/{num_heads}); got rope_dim={rope_dim}"
            )
        self.dim, self.context_dim, self.rope_dim = dim, context_dim, rope_dim
        self.blocks = nn.ModuleList(
            PredictorBlock(dim, context_dim, num_heads, mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, context_dim)
        init_linear_weights(self, std=init_std)

    def context_cache(self, context: torch.Tensor, pos_k: torch.Tensor) -> KVCache:
        """Project context tokens once for every block; extend with `extend_cache` per new token."""
        rope_k = time_rope(pos_k, self.rope_dim)
        return [block.attention.project_context(context, rope_k) for block in self.blocks]

    def extend_cache(self, cache: KVCache, context: torch.Tensor, pos_k: torch.Tensor) -> KVCache:
        new = self.context_cache(context, pos_k)
        return [(torch.cat((k, nk), 2), torch.cat((v, nv), 2)) for (k, v), (nk, nv) in zip(cache, new, strict=True)]

    def forward(
        self,
        queries: torch.Tensor,
        pos_q: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        pos_k: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if cache is None:
            if context is None or pos_k is None:
                raise ValueError("pass either context tokens with pos_k, or a cache")
            cache = self.context_cache(context, pos_k)
        rope_q = time_rope(pos_q, self.rope_dim)
        x = queries
        for block, (k, v) in zip(self.blocks, cache, strict=True):
            x = block(x, k, v, rope_q, mask)
        return self.head(self.norm(x))
