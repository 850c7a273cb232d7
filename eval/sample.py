"""Sampling M futures of one clip with figures and statistics: what `deltaworld sample` writes and
the benchmark's hypothesis grid. The sampling itself is `worldmodel.sampling.sample_futures`."""

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig

from deltaworld.data.actions import ActionSource, load_actions
from deltaworld.data.sources import resize_center_crop
from deltaworld.data.synthetic import render_clip
from deltaworld.data.video import decode_frames, probe_video
from deltaworld.eval.device import resolve_device
from deltaworld.eval.diversity import diversity_stats
from deltaworld.eval.figures import animated_grid, hypothesis_grid, image_grid
from deltaworld.eval.heads import load_heads, rgb_images
from deltaworld.eval.pca import PCAProjection
from deltaworld.eval.plan_models import MAKE, ActionWorld, load_action_world, takes_actions
from deltaworld.tokenizer.backbone import Backbone
from deltaworld.tokenizer.checkpoint import atomic_save_safetensors, atomic_write_text
from deltaworld.tokenizer.pixel import to_uint8, to_unit
from deltaworld.tokenizer.training import parameter_digest
from deltaworld.worldmodel.actions import split_actions
from deltaworld.worldmodel.checkpoint import load_world
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.sampling import sample_futures
from deltaworld.worldmodel.spaces import DeltaTokens, PatchTokens

log = logging.getLogger(__name__)


def video_clip(path: str, *, frames: int, context: int, stride: float, start: float | None, size: int) -> dict:
    """`frames` frames `stride` seconds apart (true presentation times) from the middle of the video,
    or from `start`; when the video ends early only the context is returned (no ground truth)."""
    info = probe_video(path)
    last = info.duration - 1 / info.fps
    span = (frames - 1) * stride
    if (context - 1) * stride > last:
        raise ValueError(f"{path} ({info.duration:.2f} s) is too short for {context} context frames {stride} s apart")
    if start is None:
        start = max(0.0, (last - span) / 2)
    wanted = start + stride * np.arange(frames)
    wanted = wanted[wanted <= last] if wanted[-1] > last else wanted
    images, times = decode_frames(path, wanted)
    return {"frames": resize_center_crop(images, size, size), "timestamps": times - times[0]}


@torch.no_grad()
def futures_gif(
    path: str | Path,
    *,
    context_feats: torch.Tensor,
    hypotheses: torch.Tensor,
    grid: tuple[int, int],
    future_feats: torch.Tensor | None = None,
    rgb_head: nn.Module | None = None,
    max_hypotheses: int = 8,
    pairs_per_row: int = 4,
) -> Path:
    """The sampled futures as an animated GIF, one frame per context then predicted step: per
    hypothesis (the first `max_hypotheses`) a pair of cells, the truth left and the hypothesis right,
    `pairs_per_row` pairs to a row. Every cell is features rendered to pixels by `rgb_head` or, without
    one, as PCA maps sharing one projection fitted on the true features; through the context every
    cell shows the shared context, and past it a truth cell is black when the truth is unknown.

    context_feats (Tc, N, D); hypotheses (M, Hf, N, D); future_feats (Hf, N, D)."""
    known = torch.cat([context_feats] + ([future_feats] if future_feats is not None else []))
    pca = PCAProjection(known) if rgb_head is None else None

    def render(feats: torch.Tensor) -> torch.Tensor:  # (..., N, D) -> (..., H, W, 3) in [0, 1]
        return pca(feats, grid).cpu() if pca is not None else rgb_images(rgb_head, feats, grid)

    hyps = hypotheses[:max_hypotheses]
    truth = render(future_feats) if future_feats is not None else None
    return futures_animation(path, render(context_feats), render(hyps), truth, pairs_per_row=pairs_per_row)


def futures_animation(
    path: str | Path,
    past: torch.Tensor,
    futures: torch.Tensor,
    truth: torch.Tensor | None,
    *,
    pairs_per_row: int = 4,
) -> Path:
    """The layout of `futures_gif` for images (H, W, 3) in [0, 1]: past (Tc, ...), futures
    (m, Hf, ...), truth (Hf, ...) or None (black cells)."""
    truth = [None] * futures.shape[1] if truth is None else truth
    m = len(futures)
    frames = [[past[t]] * (2 * m) for t in range(len(past))]
    frames += [[cell for i in range(m) for cell in (truth[s], futures[i, s])] for s in range(futures.shape[1])]
    return animated_grid(frames, path, columns=2 * min(pairs_per_row, m))


@torch.no_grad()
def sample_and_describe(
    backbone: Backbone,
    space: DeltaTokens | PatchTokens,
    world: DeltaWorld,
    frames: torch.Tensor,
    times: torch.Tensor,
    future_times: torch.Tensor,
    *,
    context: int,
    samples: int,
    generator: torch.Generator,
    out_dir: Path,
    figure_name: str,
    figure_rows: int = 8,
    gif_name: str | None = None,
    rgb_head: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Sample M futures of one clip (frames (1, T, 3, H, W) at times (1, T); the first `context`
    are the context; the rest, when they cover every future time, the ground truth) and write the
    hypothesis grid and diversity.json into out_dir, and given `gif_name` the futures as a GIF
    (`futures_gif`, its first `figure_rows` hypotheses, through `rgb_head` if given). Returns tokens
    (1, M, H, K, C), features (1, M, H, N, D) and the patch grid."""
    feats = backbone(frames)  # (1, T, N, D)
    h, w = frames.shape[-2:]
    grid = backbone.grid(h, w)
    tokens, hyps = sample_futures(
        world,
        space,
        feats[:, :context],
        times[:, :context],
        future_times,
        grid=grid,
        black=backbone.black_features(h, w),
        samples=samples,
        generator=generator,
    )
    truth = feats[:, context:] if feats.shape[1] == context + future_times.shape[1] else None
    stats = diversity_stats(hyps, truth, times=future_times[0].tolist(), tokens=tokens)
    atomic_write_text(out_dir / "diversity.json", json.dumps(stats, indent=2) + "\n")
    hypothesis_grid(
        out_dir / figure_name,
        frames=frames[0].cpu(),
        context_feats=feats[0, :context].cpu(),
        hypotheses=hyps[0].cpu(),
        future_feats=None if truth is None else truth[0].cpu(),
        grid=grid,
        times=torch.cat((times[:, :context], future_times), 1)[0].tolist(),
        max_rows=figure_rows,
    )
    if gif_name is not None:
        futures_gif(
            out_dir / gif_name,
            context_feats=feats[0, :context],
            hypotheses=hyps[0],
            future_feats=None if truth is None else truth[0],
            grid=grid,
            rgb_head=rgb_head,
            max_hypotheses=figure_rows,
        )
    return tokens, hyps, grid


def sample_rgb_head(path: str | None, backbone: Backbone, device: torch.device) -> nn.Module | None:
    """The RGB head of a heads file (`heads=`), refused if trained on another backbone; None without
    a file, or (logged) when the file has no RGB head: futures.gif then shows PCA maps."""
    if not path:
        return None
    heads, meta = load_heads(path)
    if meta.get("backbone_digest") != parameter_digest(backbone):
        raise ValueError(f"heads {path} were trained on another backbone than the world model's")
    if "rgb" not in heads:
        log.warning("heads %s have no RGB head (written before it existed): futures.gif shows PCA maps", path)
        return None
    return heads["rgb"].to(device)


@torch.no_grad()
def check_sample_settings(cfg: DictConfig) -> None:
    """Refuse settings that cannot sample, before anything is loaded or written."""
    positive = {"context": cfg.context, "horizon": cfg.horizon, "samples": cfg.samples, "figure_rows": cfg.figure_rows}
    for key, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}={value}: must be a whole number of at least 1")
    if not cfg.stride > 0:
        raise ValueError(f"stride={cfg.stride}: the seconds between frames must be positive")
    if cfg.start is not None and cfg.start < 0:
        raise ValueError(f"start={cfg.start}: seconds into the video cannot be negative")


def check_distinct_context(times: torch.Tensor, frames: torch.Tensor, source: str) -> None:
    """A context whose frames repeat (a source with fewer distinct frames than asked, or a start
    near the end) gives the world model no motion to continue: refused, naming the source."""
    tc = frames.shape[1]
    repeated = [
        i for i in range(1, tc) if times[0, i] <= times[0, i - 1] or torch.equal(frames[0, i], frames[0, i - 1])
    ]
    if repeated:
        raise ValueError(
            f"{source}: context frames {repeated} repeat the frame before (times {times[0].tolist()}); "
            "take frames from earlier in the video (start=), further apart (stride=) or fewer (context=)"
        )


def sample_input(
    cfg: DictConfig, size: int, device: torch.device, synthetic: Callable[[np.random.Generator], dict]
) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clip `deltaworld sample` starts from (the video's, or `synthetic(rng)` seeded by cfg.seed)
    -> (clip, frames uint8 (1, T, 3, H, W), times (1, T), future_times (1, horizon)); T = context
    + horizon when the clip holds the ground truth, else context."""
    context, horizon = cfg.context, cfg.horizon
    if cfg.video:
        clip = video_clip(
            cfg.video, frames=context + horizon, context=context, stride=cfg.stride, start=cfg.start, size=size
        )
    else:
        clip = synthetic(np.random.default_rng(cfg.seed))
    frames, times = clip["frames"][None].to(device), clip["timestamps"][None].to(device)  # (1, T, 3, H, W), (1, T)
    if cfg.video:
        check_distinct_context(times[:, :context], frames[:, :context], cfg.video)
    if frames.shape[1] == context + horizon:  # the clip has the ground truth
        future_times = times[:, context:]
    else:  # predicted frames go on `stride` apart after the last context frame
        future_times = times[:, context - 1 : context] + cfg.stride * torch.arange(1, horizon + 1, device=device)
    return clip, frames, times, future_times


def run_sample(cfg: DictConfig) -> Path:
    """`deltaworld sample` (conf/sample.yaml): samples.safetensors, hypotheses.png, futures.gif and
    diversity.json of one clip (a video's, or a synthetic one) in cfg.out_dir; with an action world
    model and `actions=`, the futures under those actions (`run_action_sample`)."""
    check_sample_settings(cfg)
    device = resolve_device(cfg.device)
    if takes_actions(cfg.world_ckpt) != bool(cfg.get("actions")):
        if cfg.get("actions"):
            raise ValueError(
                f"actions={cfg.actions}: world_ckpt={cfg.world_ckpt} is a world model without actions; "
                f"an action world model takes them ({MAKE})"
            )
        raise ValueError(
            f"world_ckpt={cfg.world_ckpt} is an action world model: pass the future's actions=<file> "
            "(a (T, A) array, .npy or .json; row 0 is the action at the last context frame)"
        )
    if cfg.get("actions"):
        return run_action_sample(cfg, load_action_world(cfg.world_ckpt, device), device)
    backbone, space, world, meta = load_world(cfg.world_ckpt, device)
    rgb_head = sample_rgb_head(cfg.get("heads"), backbone, device)
    context, size = cfg.context, meta["frame_size"]
    _, frames, times, future_times = sample_input(
        cfg, size, device, lambda rng: render_clip(rng, num_frames=context + cfg.horizon, height=size, width=size)
    )
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens, hyps, grid = sample_and_describe(
        backbone,
        space,
        world,
        frames,
        times,
        future_times,
        context=context,
        samples=cfg.samples,
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
        out_dir=out_dir,
        figure_name="hypotheses.png",
        figure_rows=cfg.figure_rows,
        gif_name="futures.gif",
        rgb_head=rgb_head,
    )
    atomic_save_safetensors(
        {
            "tokens": tokens[0],
            "features": hyps[0],
            "context_times": times[0, :context],
            "future_times": future_times[0],
        },
        out_dir / "samples.safetensors",
        {"world_ckpt": str(cfg.world_ckpt), "video": str(cfg.video), "grid": json.dumps(list(grid))},
    )
    report_written(out_dir)
    return out_dir


def report_written(out_dir: Path) -> None:
    stats = json.loads((out_dir / "diversity.json").read_text())
    log.info("pairwise distance per step: %s", [round(v, 4) for v in stats["pairwise_distance"]])
    print(
        f"samples: {out_dir / 'samples.safetensors'}\nfigure: {out_dir / 'hypotheses.png'}\n"
        f"animation: {out_dir / 'futures.gif'}\nstatistics: {out_dir / 'diversity.json'}"
    )


def unit_images(frames: torch.Tensor) -> torch.Tensor:
    """Frames (..., 3, H, W) in [-1, 1] -> images (..., H, W, 3) in [0, 1], as the figures draw them."""
    return ((frames.float().clamp(-1, 1) + 1) / 2).movedim(-3, -1).cpu()


@torch.no_grad()
def run_action_sample(cfg: DictConfig, model: ActionWorld, device: torch.device) -> Path:
    """M futures of one clip under the actions of cfg.actions ((T, A), T >= horizon: row 0 is taken
    at the last context frame and drives the first predicted frame, row h at predicted frame h - 1).
    The context frames' own earlier actions are the synthetic clip's, or zeros for a video (whose
    actions are unknown). Writes what `deltaworld sample` writes, the features being the decoded
    frames: samples.safetensors (tokens, frames uint8 (M, H, 3, h, w), actions), hypotheses.png,
    futures.gif (the video's future, where it has one, beside each hypothesis) and diversity.json
    (over pixels)."""
    context, horizon, size = cfg.context, cfg.horizon, model.frame_size
    actions = load_actions(cfg.actions, action_dim=model.action_dim, length=horizon)[:horizon].to(device)
    source = ActionSource(num_frames=context + horizon, height=size, width=size)
    clip, frames, times, future_times = sample_input(cfg, size, device, source.sample_clip)
    if cfg.video:
        if context > 1:
            log.warning("the actions of the video's context frames are unknown: taken as zeros")
        past = actions.new_zeros(1, context - 1, model.action_dim)
    else:
        past = clip["actions"][None, : context - 1].to(device)
    context_actions, future_actions = split_actions(past, actions[None])
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens, futures = model.futures(
        frames[:, :context],
        times[:, :context],
        context_actions,
        future_times,
        future_actions,
        samples=cfg.samples,
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
    )  # (1, M, H, ...), (1, M, H, 3, h, w)
    # the synthetic clip's future follows its own actions, not the given ones: no ground truth then
    truth = to_unit(frames[0, context:]) if cfg.video and frames.shape[1] == context + horizon else None
    shown = unit_images(futures[0, : cfg.figure_rows])  # (m, H, h, w, 3)
    past_images = unit_images(to_unit(frames[0, :context]))
    truth_images = None if truth is None else unit_images(truth)
    stats = diversity_stats(
        unit_images(futures).flatten(3, 4),  # (1, M, H, h*w, 3): pixels as the "features"
        None if truth_images is None else truth_images[None].flatten(2, 3),
        times=future_times[0].tolist(),
        tokens=tokens,
    )
    atomic_write_text(out_dir / "diversity.json", json.dumps(stats, indent=2) + "\n")
    all_times = torch.cat((times[:, :context], future_times), 1)[0].tolist()
    rows = [("frames", [*past_images, *([] if truth_images is None else truth_images)])]
    rows += [(f"hypothesis {m}", [None] * context + list(hyp)) for m, hyp in enumerate(shown)]
    titles = [f"t={t:.2f}s" + (" (ctx)" if i < context else "") for i, t in enumerate(all_times)]
    image_grid(rows, out_dir / "hypotheses.png", col_titles=titles)
    futures_animation(out_dir / "futures.gif", past_images, shown, truth_images)
    atomic_save_safetensors(
        {
            "tokens": tokens[0],
            "frames": to_uint8(futures[0]),
            "actions": actions,
            "context_times": times[0, :context],
            "future_times": future_times[0],
        },
        out_dir / "samples.safetensors",
        {"world_ckpt": str(cfg.world_ckpt), "video": str(cfg.video), "actions": str(cfg.actions)},
    )
    report_written(out_dir)
    return out_dir
