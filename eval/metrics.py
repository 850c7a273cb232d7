"""Dense forecasting metrics, accumulated over a whole evaluation set per (method, horizon).

miou: torchmetrics' MulticlassJaccardIndex (macro over classes, IGNORE_INDEX skipped), from the
confusion matrix of every scored pixel of the set. depth_rmse: global over all valid pixels of the
set (depth > 0), as the reference computes it, not a mean of per-image RMSEs. feat_loss / feat_cos:
mean squared error / per-patch cosine to the true features. hypothesis_spread_feat / _token: of a
sampling method, the standard deviation across its hypotheses at the target frame, averaged over
patches and channels of the features / over tokens and channels of the tokens.

Beside these running values, `ClipStats` keeps every clip's sufficient statistics (its confusion
matrix; its sum of squared errors and their count; ...), which add up over clips: the metric of any
(re)sampled multiset of clips is `REDUCERS[metric]` of the sum of their statistics, the full set's
computation on the drawn clips (eval/bootstrap.py draws the intervals from it). On every clip once
it gives the running value up to float rounding: the running sums are float32, in batch order.
"""

import math
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchmetrics import MeanSquaredError
from torchmetrics.classification import MulticlassJaccardIndex

from deltaworld.data.labelled import IGNORE_INDEX
from deltaworld.eval.diversity import hypothesis_spread
from deltaworld.eval.records import Record

Key = tuple[str, int, str]  # (method, horizon, metric)


def miou_metric(num_classes: int) -> MulticlassJaccardIndex:
    return MulticlassJaccardIndex(num_classes, ignore_index=IGNORE_INDEX, average="macro", validate_args=False)


def depth_rmse_metric() -> MeanSquaredError:
    return MeanSquaredError(squared=False)


def valid_depth(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted and true depths (P,) of the pixels with a valid label (target > 0)."""
    valid = target > 0
    return pred[valid].float(), target[valid].float()


def row_sums(values: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """values (n, ...) -> (n, 2) float64: each row's sum over its `valid` entries (default: all), and their count."""
    values = values.double().flatten(1)
    if valid is None:
        return torch.stack([values.sum(1), torch.full_like(values[:, 0], values.shape[1])], 1)
    valid = valid.flatten(1)
    return torch.stack([torch.where(valid, values, 0.0).sum(1), valid.sum(1).double()], 1)


def confusion_rows(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """pred, labels (n, h, w) class ids -> (n, C*C): each row's confusion matrix over its scored
    pixels, flattened with the true class major (torchmetrics' layout)."""
    n, c = pred.shape[0], num_classes
    rows = torch.arange(n, device=pred.device).view(n, 1, 1).expand_as(pred)
    cells = (rows * c + labels) * c + pred
    return torch.bincount(cells[labels != IGNORE_INDEX], minlength=n * c * c).view(n, c * c)


def depth_sums(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target (n, h, w) metres -> (n, 2): each row's squared error summed over the pixels
    `valid_depth` keeps, and their count."""
    return row_sums((pred.double() - target.double()).pow(2), target > 0)


def feature_metrics(pred: torch.Tensor, target: torch.Tensor) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """pred, target (n, N, D) -> the batch's feat_loss (mean squared error) and feat_cos (mean
    per-patch cosine similarity), and each row's sums and counts (n, 2) of both."""
    pred, target = pred.float(), target.float()
    cos = F.cosine_similarity(pred, target, dim=-1)  # (n, N)
    values = {"feat_loss": F.mse_loss(pred, target).item(), "feat_cos": cos.mean().item()}
    return values, {"feat_loss": row_sums((pred - target).pow(2)), "feat_cos": row_sums(cos)}


SPREAD_METRICS = ("hypothesis_spread_feat", "hypothesis_spread_token")


def spread_metrics(tokens: torch.Tensor, feats: torch.Tensor) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """M hypotheses of a batch at one frame, tokens (n, M, K, C) and features (n, M, N, D) -> the
    batch's mean spread across hypotheses in each space, and each row's sums and counts (n, 2)."""
    spreads = dict(zip(SPREAD_METRICS, (hypothesis_spread(feats), hypothesis_spread(tokens)), strict=True))
    return {k: v.mean().item() for k, v in spreads.items()}, {k: row_sums(v) for k, v in spreads.items()}


def miou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Confusion matrices (R, C*C) -> their mIoU (R,) as MulticlassJaccardIndex computes it: the
    IoU of each class, averaged over the classes present in the labels or the predictions."""
    c = math.isqrt(confusion.shape[-1])
    confusion = confusion.reshape(-1, c, c).double()
    inter = confusion.diagonal(dim1=-2, dim2=-1)  # (R, C)
    union = confusion.sum(-1) + confusion.sum(-2) - inter  # 0 exactly for the absent classes
    return (inter / union.clamp(min=1)).sum(-1) / (union > 0).sum(-1)


def mean_from_sums(sums: torch.Tensor) -> torch.Tensor:
    """(R, 2) summed (total, count) -> the means (R,)."""
    return sums[:, 0] / sums[:, 1]


def rmse_from_sums(sums: torch.Tensor) -> torch.Tensor:
    """(R, 2) summed (squared error, count) -> the root mean squared errors (R,)."""
    return mean_from_sums(sums).sqrt()


REDUCERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "miou": miou_from_confusion,
    "depth_rmse": rmse_from_sums,
    "feat_loss": mean_from_sums,
    "feat_cos": mean_from_sums,
    **dict.fromkeys(SPREAD_METRICS, mean_from_sums),
}


class ClipStats:
    """Per-clip sufficient statistics of each (method, horizon, metric): a vector of sums (S,) per
    clip. Kept sparse, as (stat, clip) -> value entries: a clip's confusion matrix touches few of
    its C^2 cells. The rows of one clip (its crops) add up."""

    def __init__(self) -> None:
        self.entries: dict[Key, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        self.width: dict[Key, int] = {}
        self.num_clips = 0

    def add(self, key: Key, clips: torch.Tensor, stats: torch.Tensor) -> None:
        """clips (n,) the clip index of each row, stats (n, S) the row's sums."""
        clips, stats = clips.cpu(), stats.cpu()
        rows, cells = stats.nonzero(as_tuple=True)
        self.entries[key].append((torch.stack([cells, clips[rows]]), stats[rows, cells].double()))
        self.width[key] = stats.shape[1]
        self.num_clips = max(self.num_clips, int(clips.max()) + 1)

    def sums(self, key: Key, weights: torch.Tensor) -> torch.Tensor:
        """weights (R, num_clips): how many times each clip counts in each of R sets -> the sets'
        summed statistics (R, S)."""
        index, values = (torch.cat(parts, -1) for parts in zip(*self.entries[key], strict=True))
        size = (self.width[key], self.num_clips)
        stats = torch.sparse_coo_tensor(index, values, size, check_invariants=True)  # (S, clips)
        return torch.sparse.mm(stats, weights.double().T).T

    def metric(self, key: Key, weights: torch.Tensor) -> torch.Tensor:
        """The metric of `key` on each weighting of the clips (R, num_clips) -> (R,)."""
        return REDUCERS[key[2]](self.sums(key, weights))


class DenseMetrics:
    """miou / depth_rmse state per (method, horizon); `update` with head outputs at label resolution.
    Updates given `clips` (the clip index of each row) also keep their per-clip statistics in
    `clip_stats`."""

    def __init__(self, *, num_classes: int | None) -> None:
        self.num_classes = num_classes
        self.state: dict[Key, object] = {}
        self.clip_stats = ClipStats()

    def _metric(self, method: str, horizon: int, name: str):
        key = (method, horizon, name)
        if key not in self.state:
            self.state[key] = miou_metric(self.num_classes) if name == "miou" else depth_rmse_metric()
        return self.state[key]

    def update_segmentation(
        self, method: str, horizon: int, logits: torch.Tensor, labels: torch.Tensor, clips: torch.Tensor | None = None
    ) -> None:
        """logits (B, classes, h, w), labels (B, h, w) int64 with IGNORE_INDEX where unlabelled, clips (B,)."""
        pred, labels = logits.argmax(1).cpu(), labels.cpu()
        if (labels != IGNORE_INDEX).any():
            self._metric(method, horizon, "miou").update(pred, labels)
        if clips is not None:
            self.clip_stats.add((method, horizon, "miou"), clips, confusion_rows(pred, labels, self.num_classes))

    def update_depth(
        self, method: str, horizon: int, depth: torch.Tensor, labels: torch.Tensor, clips: torch.Tensor | None = None
    ) -> None:
        """depth (B, h, w) metres, labels (B, h, w) with 0 where invalid, clips (B,)."""
        depth, labels = depth.cpu(), labels.cpu()
        pred, target = valid_depth(depth, labels)
        if target.numel():
            self._metric(method, horizon, "depth_rmse").update(pred, target)
        if clips is not None:
            self.clip_stats.add((method, horizon, "depth_rmse"), clips, depth_sums(depth, labels))

    def records(self, dataset: str) -> list[Record]:
        return [
            Record(dataset, method, horizon, name, float(metric.compute()))
            for (method, horizon, name), metric in self.state.items()
        ]
