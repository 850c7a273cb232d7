"""The dense forecasting benchmark: metrics of every method at every horizon, the per-method map
figure, sampled futures of a few clips (hypothesis grid, diversity plot), report. `deltaworld eval`
runs it on checkpoints; `deltaworld demo` on the models it has just trained."""

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.utils.data import Dataset

from deltaworld.eval.bootstrap import LEVEL, RESAMPLES
from deltaworld.eval.crops import repeat_for_crops, square_crops
from deltaworld.eval.curves import CURVES_CAPTION, training_curves
from deltaworld.eval.device import resolve_device
from deltaworld.eval.figures import diversity_plot
from deltaworld.eval.forecast import (
    batch_by_shape,
    evaluate_forecasts,
    forecast_figure,
    labelled_batches,
    oracle,
    tokenizer_ceiling,
)
from deltaworld.eval.heads import load_heads
from deltaworld.eval.records import Record
from deltaworld.eval.report import write_report
from deltaworld.eval.sample import sample_and_describe
from deltaworld.tokenizer.backbone import Backbone
from deltaworld.tokenizer.checkpoint import load_tokenizer, read_metadata
from deltaworld.tokenizer.deltatok import DeltaTok
from deltaworld.tokenizer.training import parameter_digest
from deltaworld.worldmodel.checkpoint import load_world
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.sampling import (
    Method,
    copy_last,
    extrapolate_token,
    repeat_token,
    token_forecaster,
    world_forecaster,
)
from deltaworld.worldmodel.spaces import DeltaTokens, PatchTokens

METHOD_NOTES = (
    "oracle: the true features of the target frame through the heads (upper bound); "
    "copy_last: the last context frame's features (lower bound); "
    "tokenizer: the true future coded closed loop, each frame against the previous reconstruction "
    "(ceiling of token prediction)",
    "repeat_token: the last context token at every future step; extrapolate_token: the last two context "
    "tokens extrapolated linearly, step by step; both decoded closed loop from the last context frame as the "
    "world model's tokens are (does the world model beat continuing the last change?)",
    "deltaworld_best: of M sampled futures, the one whose features at the target frame are closest (MSE) "
    "to the true features; deltaworld_mean: features averaged over the M futures before the heads; "
    "deterministic: one learned query instead of noise (N=1)",
    "miou: mean IoU over classes (torchmetrics, 255 ignored), higher is better; "
    "depth_rmse: metres, over all valid pixels of the set; "
    "feat_loss: MSE to the target's true features; feat_cos: mean per-patch cosine",
)


def check_heads(heads_meta: dict, backbone: Backbone, dataset: Dataset, heads_path: str | Path) -> None:
    """Heads only mean something on the features and label set they were trained for: refuse
    another backbone, or a dataset with other classes or without their task."""
    config = heads_meta["heads"]
    other_classes = config["num_classes"] not in (None, getattr(dataset, "num_classes", None))
    other_depth = (config["depth_range"] is None) != (getattr(dataset, "depth_range", None) is None)
    if other_classes or other_depth:
        raise ValueError(
            f"heads {heads_path} were trained for {heads_meta.get('dataset')} ({config['num_classes']} classes, "
            f"depth range {config['depth_range']}), not for {dataset.name} ({dataset.num_classes} classes, "
            f"depth range {dataset.depth_range})"
        )
    digest = parameter_digest(backbone)
    if heads_meta.get("backbone_digest") != digest:
        raise ValueError(
            f"heads {heads_path} were trained on another backbone ({heads_meta.get('backbone', {}).get('name')}, "
            f"weights {str(heads_meta.get('backbone_digest'))[:12]}) than the model under evaluation "
            f"(weights {digest[:12]}); train them with `deltaworld heads backbone_from=<this checkpoint>`"
        )


def forecasting_methods(
    *,
    deltatok: DeltaTok,
    world: tuple[DeltaTokens | PatchTokens, DeltaWorld] | None = None,
    deterministic: tuple[DeltaTokens | PatchTokens, DeltaWorld] | None = None,
    samples: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> list[Method]:
    """The benchmark's methods, in the report's row order. The token baselines live in the
    tokenizer's delta tokens, whatever space the world model predicts in."""
    space = DeltaTokens(deltatok)
    methods = [
        oracle,
        copy_last,
        tokenizer_ceiling(deltatok),
        token_forecaster(repeat_token, space, name="repeat_token"),
        token_forecaster(extrapolate_token, space, name="extrapolate_token"),
    ]
    if world:
        generator = torch.Generator(device=device).manual_seed(seed)
        methods.append(world_forecaster(world[1], world[0], samples=samples, generator=generator))
    if deterministic:
        methods.append(world_forecaster(deterministic[1], deterministic[0], samples=1, name="deterministic"))
    return methods


def run_benchmark(
    *,
    backbone: Backbone,
    heads: nn.ModuleDict,
    dataset: Dataset,
    methods: list[Method],
    context: int,
    horizons: list[int],
    batch_size: int,
    num_workers: int,
    out_dir: Path,
    title: str,
    world: tuple[DeltaTokens | PatchTokens, DeltaWorld] | None = None,
    samples: int = 20,
    figure_clips: int = 8,
    seed: int = 0,
    notes: list[str] = (),
    figures: dict[str, Path] | None = None,
    training_runs: Mapping[str, str | Path] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Path, list[Record]]:
    """Score `methods` on `dataset`, draw the figures, write metrics.json and report.md (which
    also shows the given `figures`, captioned by their keys, and the training curves of
    `training_runs`, name -> run folder or CSV log; a run without a log is noted, not drawn)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes, depth_range = getattr(dataset, "num_classes", None), getattr(dataset, "depth_range", None)
    records = evaluate_forecasts(
        backbone=backbone,
        batches=labelled_batches(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False, seed=seed),
        methods=methods,
        context=context,
        horizons=horizons,
        dataset=dataset.name,
        heads=heads,
        num_classes=num_classes,
        device=device,
        seed=seed,
    )
    intervals = (
        f"[low, high]: {LEVEL:.0%} paired bootstrap interval over the {len(dataset)} clips ({RESAMPLES} resamples "
        f"with replacement, seed {seed}; every method and horizon on the same draws), each resample scored as the "
        "full set is: mIoU from its summed confusion matrix, depth_rmse from its summed squared errors"
    )
    figures = dict(figures or {})
    figures |= {
        f"Forecasts of one clip at horizon {h}: PCA features, segmentation, depth, RGB per method": forecast_figure(
            out_dir / f"forecast_h{h}.png",
            backbone=backbone,
            heads=heads,
            methods=methods,
            clip=dataset[0],
            context=context,
            horizon=h,
            num_classes=num_classes,
            depth_range=depth_range,
            device=device,
        )
        for h in horizons
    }
    if world is not None:
        clips = next(batch_by_shape((dataset[i] for i in range(min(figure_clips, len(dataset)))), figure_clips))
        frames, layout = square_crops(clips["frames"])
        times = repeat_for_crops(clips["timestamps"], layout)
        frames, times = frames.to(device), times.to(device)
        sample_and_describe(
            backbone,
            world[0],
            world[1],
            frames,
            times,
            times[:, context:],
            context=context,
            samples=samples,
            generator=torch.Generator(device=device).manual_seed(seed),
            out_dir=out_dir,
            figure_name="hypotheses.png",
        )
        stats = json.loads((out_dir / "diversity.json").read_text())
        clip_count = frames.shape[0] // layout.num_crops
        figures[f"{samples} sampled futures of one clip (first 8 rows), PCA shared with the true features"] = (
            out_dir / "hypotheses.png"
        )
        figures[
            f"Diversity over {clip_count} clips: distance between hypotheses, best and mean error, per future step"
        ] = diversity_plot(out_dir / "diversity.png", stats)
    notes = [*METHOD_NOTES, intervals, *notes]
    if training_runs:
        curves, missing = training_curves(out_dir / "training_curves.png", training_runs)
        if curves is not None:
            figures[CURVES_CAPTION] = curves
        notes += missing
    report = write_report(out_dir, records, title=title, figures=figures, notes=notes)
    return report, records


def models_from_config(cfg: DictConfig, device: torch.device):
    """(backbone, deltatok, world, deterministic, meta) on `device` from the checkpoints the config names."""
    source = cfg.world_ckpt or cfg.tokenizer_ckpt or cfg.deterministic_ckpt
    if not source:
        raise ValueError("give world_ckpt=<world export> (or tokenizer_ckpt=<tokenizer export>) to evaluate")
    backbone, deltatok = load_tokenizer(source, device)
    world = load_world(cfg.world_ckpt, device)[1:3] if cfg.world_ckpt else None
    deterministic = load_world(cfg.deterministic_ckpt, device)[1:3] if cfg.deterministic_ckpt else None
    return backbone, deltatok, world, deterministic, read_metadata(source)


@torch.no_grad()
def run_eval(cfg: DictConfig) -> Path:
    """`deltaworld eval` (conf/eval.yaml): the benchmark of the checkpoints the config names."""
    device = resolve_device(cfg.device)
    backbone, deltatok, world, deterministic, meta = models_from_config(cfg, device)
    heads, heads_meta = load_heads(cfg.heads)
    heads.to(device)
    with open_dict(cfg):
        cfg.frame_size = cfg.frame_size or meta["frame_size"]
    dataset = instantiate(cfg.data.benchmark.eval)
    check_heads(heads_meta, backbone, dataset, cfg.heads)
    methods = forecasting_methods(
        deltatok=deltatok, world=world, deterministic=deterministic, samples=cfg.samples, seed=cfg.seed, device=device
    )
    report, _ = run_benchmark(
        backbone=backbone,
        heads=heads,
        dataset=dataset,
        methods=methods,
        context=cfg.context,
        horizons=list(cfg.horizons),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        out_dir=Path(cfg.out_dir),
        title=f"Dense forecasting benchmark: {dataset.name}",
        world=world,
        samples=cfg.samples,
        figure_clips=cfg.figure_clips,
        seed=cfg.seed,
        device=device,
        notes=[f"checkpoints: world {cfg.world_ckpt}, deterministic {cfg.deterministic_ckpt}, heads {cfg.heads}"],
        # an export lies in its run folder, beside the run's CSV log, unless it was moved
        training_runs={
            name: Path(ckpt).parent
            for name, ckpt in (("world", cfg.world_ckpt), ("deterministic", cfg.deterministic_ckpt))
            if ckpt
        },
    )
    print(f"\nreport: {report}")
    return report
