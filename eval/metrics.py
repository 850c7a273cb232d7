"""Dense forecasting metrics, accumulated over a whole evaluation set per (method, horizon).

miou: torchmetrics' MulticlassJaccardIndex (macro over classes, IGNORE_INDEX skipped), from the
confusion matrix of every scored pixel of the set. depth_rmse: global over all valid pixels of the
set (depth > 0), as the reference computes it, not a mean of per-image RMSEs.
"""

import torch
from torchmetrics import MeanSquaredError
from torchmetrics.classification import MulticlassJaccardIndex

from deltaworld.data.labelled import IGNORE_INDEX
from deltaworld.eval.records import Record


def miou_metric(num_classes: int) -> MulticlassJaccardIndex:
    return MulticlassJaccardIndex(num_classes, ignore_index=IGNORE_INDEX, average="macro", validate_args=False)


def depth_rmse_metric() -> MeanSquaredError:
    return MeanSquaredError(squared=False)


def valid_depth(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted and true depths (P,) of the pixels with a valid label (target > 0)."""
    valid = target > 0
    return pred[valid].float(), target[valid].float()


class DenseMetrics:
    """miou / depth_rmse state per (method, horizon); `update` with head outputs at label resolution."""

    def __init__(self, *, num_classes: int | None) -> None:
        self.num_classes = num_classes
        self.state: dict[tuple[str, int, str], object] = {}

    def _metric(self, method: str, horizon: int, name: str):
        key = (method, horizon, name)
        if key not in self.state:
            self.state[key] = miou_metric(self.num_classes) if name == "miou" else depth_rmse_metric()
        return self.state[key]

    def update_segmentation(self, method: str, horizon: int, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits (B, classes, h, w), labels (B, h, w) int64 with IGNORE_INDEX where unlabelled."""
        scored = labels != IGNORE_INDEX
        if scored.any():
            self._metric(method, horizon, "miou").update(logits.argmax(1).cpu(), labels.cpu())

    def update_depth(self, method: str, horizon: int, depth: torch.Tensor, labels: torch.Tensor) -> None:
        """depth (B, h, w) metres, labels (B, h, w) with 0 where invalid."""
        pred, target = valid_depth(depth.cpu(), labels.cpu())
        if target.numel():
            self._metric(method, horizon, "depth_rmse").update(pred, target)

    def records(self, dataset: str) -> list[Record]:
        return [
            Record(dataset, method, horizon, name, float(metric.compute()))
            for (method, horizon, name), metric in self.state.items()
        ]
