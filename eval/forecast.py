"""Feature forecasting evaluation: every method predicts the features at each horizon from the
same context, and is scored against the true future features."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval.records import MeanAccumulator, Record
from tokenizer.backbone import Backbone
from tokenizer.deltatok import DeltaTok


@dataclass
class ForecastCase:
    """One horizon of one batch: `context` frames end `horizon` frames before the target frame."""

    horizon: int
    grid: tuple[int, int]
    context_feats: torch.Tensor  # (B, Tc, N, D)
    context_tokens: torch.Tensor  # (B, Tc, K, C)
    context_times: torch.Tensor  # (B, Tc) seconds
    future_times: torch.Tensor  # (B, h) seconds, the last one is the target's
    future_feats: torch.Tensor  # (B, h, N, D) true features of the frames after the context
    target_feats: torch.Tensor  # (B, N, D)


# a method maps a case to named feature predictions at the target frame, each (B, N, D)
Method = Callable[[ForecastCase], dict[str, torch.Tensor]]


def copy_last(case: ForecastCase) -> dict[str, torch.Tensor]:
    return {"copy_last": case.context_feats[:, -1]}


def tokenizer_ceiling(deltatok: DeltaTok) -> Method:
    """Codec-style closed-loop reconstruction of the true future: the ceiling of token prediction."""

    def method(case: ForecastCase) -> dict[str, torch.Tensor]:
        _, recon = deltatok.reconstruct(case.future_feats, case.grid, case.context_feats[:, -1])
        return {"tokenizer": recon[:, -1]}

    return method


def feature_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """feat_loss: mean squared error; feat_cos: mean per-patch cosine similarity."""
    pred, target = pred.float(), target.float()
    return {
        "feat_loss": F.mse_loss(pred, target).item(),
        "feat_cos": F.cosine_similarity(pred, target, dim=-1).mean().item(),
    }


def forecast_cases(
    feats: torch.Tensor,
    tokens: torch.Tensor,
    timestamps: torch.Tensor,
    grid: tuple[int, int],
    *,
    context: int,
    horizons: Iterable[int],
) -> Iterable[ForecastCase]:
    """Cases for each horizon; the target is always the clip's last frame (where labels live)."""
    t = feats.shape[1]
    for horizon in horizons:
        last_ctx = t - 1 - horizon
        first_ctx = last_ctx - context + 1
        if first_ctx < 0:
            raise ValueError(f"clips of {t} frames cannot hold {context} context frames + horizon {horizon}")
        ctx, fut = slice(first_ctx, last_ctx + 1), slice(last_ctx + 1, t)
        yield ForecastCase(
            horizon=horizon,
            grid=grid,
            context_feats=feats[:, ctx],
            context_tokens=tokens[:, ctx],
            context_times=timestamps[:, ctx],
            future_times=timestamps[:, fut],
            future_feats=feats[:, fut],
            target_feats=feats[:, -1],
        )


@torch.no_grad()
def evaluate_forecasts(
    *,
    backbone: Backbone,
    deltatok: DeltaTok,
    batches: Iterable[dict],
    methods: list[Method],
    context: int,
    horizons: Iterable[int],
    dataset: str,
    device: torch.device | str = "cpu",
) -> list[Record]:
    acc = MeanAccumulator()
    for batch in tqdm(batches, desc=f"eval {dataset}", unit="batch"):
        frames = batch["frames"].to(device)
        feats = backbone(frames)
        grid = backbone.grid(*frames.shape[-2:])
        tokens = deltatok.tokenize(feats, grid, backbone.black_features(*frames.shape[-2:]))
        for case in forecast_cases(feats, tokens, batch["timestamps"].to(device), grid, context=context, horizons=horizons):
            for method in methods:
                for name, pred in method(case).items():
                    for metric, value in feature_metrics(pred, case.target_feats).items():
                        acc.add(name, case.horizon, metric, value, count=frames.shape[0])
    return acc.records(dataset)
