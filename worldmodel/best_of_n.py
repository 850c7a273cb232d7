"""Best-of-N: score N hypotheses without gradient, supervise only the best one."""

from collections.abc import Callable

import torch
from einops import rearrange

from worldmodel.predictor import Predictor


def causal_mask(q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
    """Additive (1, 1, Lq, Lk) mask: query i sees key j only if k_index[j] < q_index[i]."""
    blocked = k_index[None, :] >= q_index[:, None]
    return torch.zeros(blocked.shape, device=q_index.device).masked_fill(blocked, float("-inf"))[None, None]


@torch.no_grad()
def select_best_queries(
    predictor: Predictor,
    queries: torch.Tensor,
    context: torch.Tensor,
    targets: torch.Tensor,
    pos_q: torch.Tensor,
    pos_k: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """queries (B, T, S, dim) for T target frames x S hypotheses; context (B, T, C) tokens of the
    frames before each target; targets (B, T, C); pos_q, pos_k (B, T).

    All T*S hypotheses run in one pass (flattened frame-major, t * S + s) under a causal mask.
    Returns (best queries (B, T, dim), losses (B, T, S), argmin (B, T)).
    """
    b, t, s, _ = queries.shape
    frame = torch.arange(t, device=queries.device)
    mask = causal_mask(frame.repeat_interleave(s) + 1, frame)
    preds = predictor(
        rearrange(queries, "b t s d -> b (t s) d"),
        pos_q.repeat_interleave(s, dim=1),
        context=context,
        pos_k=pos_k,
        mask=mask,
    )
    preds = rearrange(preds, "b (t s) c -> b t s c", s=s)
    losses = loss_fn(preds, targets[:, :, None].expand_as(preds)).mean(-1)  # (B, T, S)
    argmin = losses.argmin(-1)
    best = torch.gather(queries, 2, argmin[:, :, None, None].expand(-1, -1, 1, queries.shape[-1]))[:, :, 0]
    return best, losses, argmin
