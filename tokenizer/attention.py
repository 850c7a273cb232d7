"""The one attention entry point: flash-attn when it can serve the call, PyTorch SDPA otherwise."""

import torch
import torch.nn.functional as F

try:  # optional fast kernel (`pip install deltaworld[gpu]`)
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None


def flash_attention_usable(q: torch.Tensor, mask: torch.Tensor | None) -> bool:
    return (
        flash_attn_func is not None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and mask is None
        and q.shape[-1] <= 256
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, L, d) tensors; `mask` is additive float or bool
    (True = attend), broadcastable to (B, H, Lq, Lk). Returns (B, H, Lq, d)."""
    if flash_attention_usable(q, mask):
        # flash-attn wants (B, L, H, d)
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
