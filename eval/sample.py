"""Sampling M futures of one clip with figures and statistics: what `deltaworld sample` writes and
the benchmark's hypothesis grid. The sampling itself is `worldmodel.sampling.sample_futures`."""

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig

from deltaworld.data.sources import resize_center_crop
from deltaworld.data.synthetic import render_clip
from deltaworld.data.video import decode_frames, probe_video
from deltaworld.eval.device import resolve_device
from deltaworld.eval.diversity import diversity_stats
from deltaworld.eval.figures import animated_grid, hypothesis_grid
from deltaworld.eval.heads import load_heads, rgb_images
from deltaworld.eval.pca import PCAProjection
from deltaworld.tokenizer.backbone import Backbone
from deltaworld.tokenizer.checkpoint import atomic_save_safetensors, atomic_write_text
from deltaworld.tokenizer.training import parameter_digest
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
    past, futures = render(context_feats), render(hyps)  # (Tc, H, W, 3), (m, Hf, H, W, 3)
    truth = render(future_feats) if future_feats is not None else [None] * hyps.shape[1]
    frames = [[past[t]] * (2 * len(hyps)) for t in range(len(past))]
    frames += [[cell for m in range(len(hyps)) for cell in (truth[s], futures[m, s])] for s in range(hyps.shape[1])]
    return animated_grid(frames, path, columns=2 * min(pairs_per_row, len(hyps)))


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


def run_sample(cfg: DictConfig) -> Path:
    """`deltaworld sample` (conf/sample.yaml): samples.safetensors, hypotheses.png, futures.gif and
    diversity.json of one clip (a video's, or a synthetic one) in cfg.out_dir."""
    check_sample_settings(cfg)
    device = resolve_device(cfg.device)
    backbone, space, world, meta = load_world(cfg.world_ckpt, device)
    rgb_head = sample_rgb_head(cfg.get("heads"), backbone, device)
    size, context, horizon = meta["frame_size"], cfg.context, cfg.horizon
    if cfg.video:
        clip = video_clip(
            cfg.video, frames=context + horizon, context=context, stride=cfg.stride, start=cfg.start, size=size
        )
    else:
        clip = render_clip(np.random.default_rng(cfg.seed), num_frames=context + horizon, height=size, width=size)
    frames, times = clip["frames"][None].to(device), clip["timestamps"][None].to(device)  # (1, T, 3, H, W), (1, T)
    if cfg.video:
        check_distinct_context(times[:, :context], frames[:, :context], cfg.video)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if frames.shape[1] == context + horizon:  # the video has the ground truth
        future_times = times[:, context:]
    else:  # predicted frames go on `stride` apart after the last context frame
        future_times = times[:, context - 1 : context] + cfg.stride * torch.arange(1, horizon + 1, device=device)

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
    stats = json.loads((out_dir / "diversity.json").read_text())
    figure = out_dir / "hypotheses.png"
    log.info("pairwise distance per step: %s", [round(v, 4) for v in stats["pairwise_distance"]])
    print(
        f"samples: {out_dir / 'samples.safetensors'}\nfigure: {figure}\nanimation: {out_dir / 'futures.gif'}\n"
        f"statistics: {out_dir / 'diversity.json'}"
    )
    return out_dir
