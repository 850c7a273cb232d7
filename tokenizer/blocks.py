"""Pre-norm transformer blocks shared by DeltaTok, the pixel DeltaToken and the backbone-free stages.

Parameter names follow the reference implementation (`attention.q_proj`, `layer_scale1.lambda1`,
`mlp.gate_proj`, ...) so released checkpoints load by key mapping alone.
"""

import torch
from einops import rearrange
from torch import nn

from deltaworld.tokenizer.attention import attention
from deltaworld.tokenizer.rope import apply_rope


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden)
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class GeluMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.gelu(self.up_proj(x)))


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """SwiGLU width with the parameter count of a GELU MLP of ratio `mlp_ratio` (2/3 rule)."""
    return max(1, (2 * int(dim * mlp_ratio)) // 3)


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional 2D RoPE, q/k LayerNorm and a per-head sigmoid gate.

    Order (as the reference): RoPE, then q/k norm, then attention, then the gate.
    """

    def __init__(self, dim: int, num_heads: int, *, qk_norm: bool, gated: bool, eps: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)  # a key bias cancels in softmax
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(head_dim, eps=eps, bias=False) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=eps, bias=False) if qk_norm else nn.Identity()
        self.attn_gate = nn.Linear(dim, num_heads) if gated else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        # x: (B, L, D)
        split = "b l (h d) -> b h l d"
        q = rearrange(self.q_proj(x), split, h=self.num_heads)
        k = rearrange(self.k_proj(x), split, h=self.num_heads)
        v = rearrange(self.v_proj(x), split, h=self.num_heads)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attention(self.q_norm(q), self.k_norm(k), v)  # (B, H, L, d)
        if self.attn_gate is not None:
            gate = torch.sigmoid(self.attn_gate(x))  # (B, L, H)
            out = out * rearrange(gate, "b l h -> b h l 1")
        return self.o_proj(rearrange(out, "b h l d -> b l (h d)"))


class Block(nn.Module):
    """x + ls1 * attn(norm1(x)); x + ls2 * mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        swiglu: bool = True,
        qk_norm: bool = True,
        gated_attn: bool = True,
        layer_scale_init: float = 1e-5,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attention = SelfAttention(dim, num_heads, qk_norm=qk_norm, gated=gated_attn, eps=eps)
        self.layer_scale1 = LayerScale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        if swiglu:
            self.mlp = SwiGLU(dim, swiglu_hidden(dim, mlp_ratio))
        else:
            self.mlp = GeluMlp(dim, int(dim * mlp_ratio))
        self.layer_scale2 = LayerScale(dim, layer_scale_init)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x), rope))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


def init_linear_weights(module: nn.Module, std: float = 0.02) -> None:
    """Truncated-normal linear weights and zero biases (layer scales keep their own init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
