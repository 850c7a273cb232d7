"""Feature forecasting evaluation: every method predicts the features at each horizon from the
same context, and is scored against the true future features."""

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval.records import MeanAccumulator, Record
from tokenizer.backbone import Backbone
from tokenizer.deltatok import DeltaTok
from worldmodel.sampling import ForecastCase, Method, forecast_cases


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


@torch.no_grad()
def evaluate_forecasts(
    *,
    backbone: Backbone,
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
        grid, black = backbone.grid(*frames.shape[-2:]), backbone.black_features(*frames.shape[-2:])
        for case in forecast_cases(feats, batch["timestamps"].to(device), grid, black, context=context, horizons=horizons):
            for method in methods:
                for name, pred in method(case).items():
                    for metric, value in feature_metrics(pred, case.target_feats).items():
                        acc.add(name, case.horizon, metric, value, count=frames.shape[0])
    return acc.records(dataset)
