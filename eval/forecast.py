"""The dense forecasting benchmark: every method predicts the features of the target frame from the
same context, at each horizon; predictions are scored against the true features (feat_loss,
feat_cos) and, through the linear heads, against the target frame's labels (miou, depth_rmse)."""

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deltaworld.data.labelled import IGNORE_INDEX
from deltaworld.eval.bootstrap import RESAMPLES, bootstrap_records
from deltaworld.eval.crops import (
    CropLayout,
    crops_to_label_halves,
    repeat_for_crops,
    split_labels,
    square_crops,
)
from deltaworld.eval.figures import colorize_depth, colorize_segmentation, image_grid
from deltaworld.eval.heads import apply_head, rgb_images
from deltaworld.eval.metrics import ClipStats, DenseMetrics, feature_metrics, spread_metrics
from deltaworld.eval.pca import PCAProjection
from deltaworld.eval.records import MeanAccumulator, Record
from deltaworld.tokenizer.backbone import Backbone
from deltaworld.tokenizer.deltatok import DeltaTok
from deltaworld.worldmodel.sampling import ForecastCase, Method, Predictions, forecast_cases

# what an unlabelled pixel of each task holds, and what pads a label half
LABEL_FILL = {"segmentation": IGNORE_INDEX, "depth": 0.0}


def oracle(case: ForecastCase) -> dict[str, torch.Tensor]:
    """The upper bound of the heads: the true features of the target frame."""
    return {"oracle": case.target_feats}


def tokenizer_ceiling(deltatok: DeltaTok) -> Method:
    """Codec-style closed-loop reconstruction of the true future: the ceiling of token prediction."""

    def method(case: ForecastCase) -> dict[str, torch.Tensor]:
        _, recon = deltatok.reconstruct(case.future_feats, case.grid, case.context_feats[:, -1])
        return {"tokenizer": recon[:, -1]}

    return method


def batch_by_shape(items: Iterable[dict], batch_size: int) -> Iterator[dict]:
    """Collate consecutive items into batches of up to `batch_size`, starting a new batch whenever
    the frame or label size changes (datasets with several aspect ratios, e.g. KITTI drives)."""
    pending: list[dict] = []

    def shape(item: dict) -> tuple:
        return tuple(tuple(v.shape) for v in item.values() if torch.is_tensor(v))

    def collate() -> dict:
        return {k: torch.stack([torch.as_tensor(it[k]) for it in pending]) for k in pending[0]}

    for item in items:
        if pending and (len(pending) == batch_size or shape(item) != shape(pending[0])):
            yield collate()
            pending = []
        pending.append(item)
    if pending:
        yield collate()


def labelled_batches(
    dataset: Dataset, *, batch_size: int, num_workers: int, shuffle: bool, seed: int
) -> Iterable[dict]:
    """Batches of same-shaped items, loaded in `num_workers` processes, optionally shuffled by `seed`."""
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )
    return batch_by_shape(loader, batch_size)


def head_maps(
    head: nn.Module,
    task: str,
    feats: torch.Tensor,
    grid: tuple[int, int],
    half_size: tuple[int, int],
    layout: CropLayout,
) -> torch.Tensor:
    """A head on crop features (n*B, N, D) -> its maps on the label halves: logits (n*B, C, h, w')
    for segmentation, depth (n*B, h, w') in metres."""
    out = apply_head(head, feats, grid).float()  # (n*B, C, h, w) or (n*B, h, w)
    if task == "depth":
        return crops_to_label_halves(out[:, None], half_size, layout)[:, 0]
    return crops_to_label_halves(out, half_size, layout)


def score_heads(
    metrics: DenseMetrics,
    heads: nn.ModuleDict,
    method: str,
    horizon: int,
    feats: torch.Tensor,
    grid: tuple[int, int],
    labels: dict[str, torch.Tensor],
    layout: CropLayout,
    clips: torch.Tensor | None = None,
) -> None:
    """Heads on predicted features (n*B, N, D) -> maps at label resolution -> metric update (per
    clip too, given each row's clip index `clips` (n*B,))."""
    for task, target in labels.items():
        out = head_maps(heads[task], task, feats, grid, target.shape[-2:], layout)
        if task == "depth":
            metrics.update_depth(method, horizon, out, target, clips)
        else:
            metrics.update_segmentation(method, horizon, out, target, clips)


def crop_batch(
    batch: dict, tasks: Iterable[str]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], CropLayout]:
    """A labelled batch -> square-crop frames (n*B, T, 3, S, S), their timestamps (n*B, T) and
    the labels of `tasks` split into the halves the crops score, (n*B, h, w')."""
    frames, layout = square_crops(batch["frames"])
    times = repeat_for_crops(batch["timestamps"], layout)
    labels = {task: split_labels(batch[task], layout, fill=LABEL_FILL[task]) for task in tasks if task in batch}
    return frames, times, labels, layout


def add_means(
    features: MeanAccumulator,
    stats: ClipStats,
    name: str,
    horizon: int,
    scored: tuple[dict[str, float], dict[str, torch.Tensor]],
    clips: torch.Tensor,
) -> None:
    """A batch's mean metrics and each row's sums (n, 2) (`scored`), given each row's clip index
    `clips` (n,): the running means weigh the batch by its rows, the clip statistics keep the rows."""
    values, sums = scored
    for metric, value in values.items():
        features.add(name, horizon, metric, value, count=len(clips))
        stats.add((name, horizon, metric), clips, sums[metric])


@torch.no_grad()
def evaluate_forecasts(
    *,
    backbone: Backbone,
    batches: Iterable[dict],
    methods: list[Method],
    context: int,
    horizons: Iterable[int],
    dataset: str,
    heads: nn.ModuleDict | None = None,
    num_classes: int | None = None,
    device: torch.device | str = "cpu",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[Record]:
    """Records of every method at every horizon: feat_loss and feat_cos always; miou and
    depth_rmse for the heads given and the labels the batches carry; the hypothesis spread of the
    methods that sample (`Predictions.hypotheses`, under their name). Each value comes with its
    paired-bootstrap interval over the clips (`resamples` draws, `seed`), and with the fraction of
    the copy_last -> oracle gap it recovers (eval/bootstrap.py)."""
    features = MeanAccumulator()
    dense = DenseMetrics(num_classes=num_classes)
    tasks = list(heads) if heads is not None else []
    seen = 0  # clips of the batches before this one
    for batch in tqdm(batches, desc=f"eval {dataset}", unit="batch"):
        frames, times, labels, layout = crop_batch(batch, tasks)
        clips = repeat_for_crops(torch.arange(seen, seen + len(batch["frames"])), layout)  # (n*B,) each crop's clip
        seen += len(batch["frames"])
        frames, times = frames.to(device), times.to(device)
        labels = {task: target.to(device) for task, target in labels.items()}
        feats = backbone(frames)  # (n*B, T, N, D)
        h, w = frames.shape[-2:]
        grid, black = backbone.grid(h, w), backbone.black_features(h, w)
        for case in forecast_cases(feats, times, grid, black, context=context, horizons=horizons):
            for method in methods:
                out = method(case)
                for name, pred in out.items():
                    add_means(
                        features, dense.clip_stats, name, case.horizon, feature_metrics(pred, case.target_feats), clips
                    )
                    if labels:
                        score_heads(dense, heads, name, case.horizon, pred, grid, labels, layout, clips)
                for name, hyps in (out.hypotheses if isinstance(out, Predictions) else {}).items():
                    add_means(
                        features, dense.clip_stats, name, case.horizon, spread_metrics(hyps.tokens, hyps.feats), clips
                    )
    records = features.records(dataset) + dense.records(dataset)
    return bootstrap_records(records, dense.clip_stats, resamples=resamples, seed=seed)


@torch.no_grad()
def forecast_figure(
    path: str | Path,
    *,
    backbone: Backbone,
    heads: nn.ModuleDict,
    methods: list[Method],
    clip: dict,
    context: int,
    horizon: int,
    num_classes: int | None,
    depth_range: tuple[float, float] | None,
    device: torch.device | str = "cpu",
) -> Path:
    """One clip at one horizon: the context and target frames, then per row (truth, then every
    method) the target's PCA feature map, its pixels through the RGB head (when the heads have one;
    the truth row shows the true frame) and its segmentation and depth maps. Non-square clips show
    their first square crop."""
    batch = next(batch_by_shape([clip], 1))
    frames, layout = square_crops(batch["frames"])
    frames, times = frames[:1].to(device), repeat_for_crops(batch["timestamps"], layout)[:1].to(device)
    feats = backbone(frames)  # (1, T, N, D)
    h, w = frames.shape[-2:]
    grid = backbone.grid(h, w)
    case = next(forecast_cases(feats, times, grid, backbone.black_features(h, w), context=context, horizons=[horizon]))
    # the label half that the first crop is scored on, (1, h, w')
    truth = {
        task: split_labels(batch[task], layout, fill=LABEL_FILL[task])[:1].to(device) for task in heads if task in batch
    }
    pca = PCAProjection(feats[0])
    rgb = heads["rgb"] if "rgb" in heads else None

    def maps(pred: torch.Tensor) -> list[torch.Tensor]:
        cells = [pca(pred[0], grid)] + ([rgb_images(rgb, pred[:1], grid)[0]] if rgb is not None else [])
        for task, target in truth.items():
            out = head_maps(heads[task], task, pred, grid, target.shape[-2:], layout)[0]  # first crop
            cells.append(
                colorize_segmentation(out.argmax(0), num_classes)
                if task == "segmentation"
                else colorize_depth(out, depth_range)
            )
        return cells

    truth_cells = [pca(case.target_feats[0], grid)] + ([frames[0, -1].cpu()] if rgb is not None else [])
    if "segmentation" in truth:
        truth_cells.append(colorize_segmentation(truth["segmentation"][0], num_classes))
    if "depth" in truth:
        truth_cells.append(colorize_depth(truth["depth"][0], depth_range))
    shows = {"PCA": True, "RGB": rgb is not None, "seg": "segmentation" in truth, "depth": "depth" in truth}
    columns = [name for name, shown in shows.items() if shown]
    shown = [*range(feats.shape[1] - 1 - horizon - context + 1, feats.shape[1] - horizon), feats.shape[1] - 1]
    rows = [("context | target", [frames[0, t].cpu() for t in shown]), (f"truth: {' | '.join(columns)}", truth_cells)]
    for method in methods:
        rows += [(name, maps(pred)) for name, pred in method(case).items()]
    titles = [f"t={times[0, t]:.2f}s" for t in shown]
    return image_grid(rows, path, col_titles=titles)
