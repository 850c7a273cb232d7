"""How different are the sampled futures, and how close do the best and the mean get to the truth."""

import torch


def hypothesis_spread(hypotheses: torch.Tensor) -> torch.Tensor:
    """hypotheses (B, M, ...) -> the standard deviation across the M hypotheses of every entry,
    (B, ...); 0 for one hypothesis."""
    return hypotheses.float().std(1, unbiased=hypotheses.shape[1] > 1)


def pairwise_distance(hypotheses: torch.Tensor) -> torch.Tensor:
    """hypotheses (B, M, H, N, D) -> mean squared distance over pairs of distinct hypotheses, per step (H,)."""
    b, m, h = hypotheses.shape[:3]
    if m < 2:
        return torch.zeros(h)
    flat = hypotheses.float().permute(0, 2, 1, 3, 4).reshape(b * h, m, -1)  # (B*H, M, N*D)
    sq = torch.cdist(flat, flat).pow(2) / flat.shape[-1]  # (B*H, M, M) per-element mean squared distance
    mean_pairs = sq.sum((-2, -1)) / (m * (m - 1))
    return mean_pairs.reshape(b, h).mean(0)


def diversity_stats(
    hypotheses: torch.Tensor,
    truth: torch.Tensor | None = None,
    times: list[float] | None = None,
    tokens: torch.Tensor | None = None,
) -> dict:
    """hypotheses (B, M, H, N, D), truth (B, H, N, D) or None -> per-step statistics (JSON-ready).

    pairwise_distance: mean squared distance between two hypotheses; spread: mean over patches and
    channels of the standard deviation across hypotheses; best/mean_to_truth: mean squared error to
    the true features of the hypothesis closest to the truth at that step, and of the hypothesis mean;
    token_pairwise_distance: the same distance between the predicted tokens (B, M, H, K, C), which
    separates diversity of the world model from what the decoder keeps of it.
    """
    hyp = hypotheses.float()
    stats = {
        "samples": hyp.shape[1],
        "pairwise_distance": pairwise_distance(hyp).tolist(),
        "spread": hypothesis_spread(hyp).mean((0, 2, 3)).tolist(),
    }
    if tokens is not None:
        stats["token_pairwise_distance"] = pairwise_distance(tokens).tolist()
    if times is not None:
        stats["future_times"] = times
    if truth is not None:
        errors = (hyp - truth[:, None].float()).pow(2).mean((-2, -1))  # (B, M, H)
        stats["best_to_truth"] = errors.min(1).values.mean(0).tolist()
        stats["mean_to_truth"] = (hyp.mean(1) - truth.float()).pow(2).mean((0, 2, 3)).tolist()
    return stats
