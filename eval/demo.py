"""The demo's orchestration: a stand-in VFM, DeltaTok, two world models and linear heads trained on
synthetic labelled video, then the dense forecasting benchmark and its report."""

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from deltaworld.eval.benchmark import forecasting_methods, run_benchmark
from deltaworld.eval.configs import compose_config
from deltaworld.eval.device import resolve_device
from deltaworld.eval.figures import image_grid
from deltaworld.eval.fit_heads import fit_heads
from deltaworld.eval.heads import build_heads
from deltaworld.eval.pca import PCAProjection
from deltaworld.eval.train_heads import train_heads
from deltaworld.tokenizer.checkpoint import export_safetensors, load_tokenizer, read_metadata
from deltaworld.worldmodel.checkpoint import load_world

TrainStage = Callable[[DictConfig], Path]  # fits one stage from a `train` config, returns its export

log = logging.getLogger(__name__)


def tokenizer_figure(backbone, deltatok, clip: dict, path: Path, device: torch.device) -> Path:
    """Frames, PCA of true features and of the closed-loop reconstruction from frame 0."""
    frames = clip["frames"][None].to(device)  # (1, T, 3, H, W)
    feats = backbone(frames)
    grid = backbone.grid(*frames.shape[-2:])
    _, recon = deltatok.reconstruct(feats[:, 1:], grid, feats[:, 0])
    pca = PCAProjection(feats)
    times = [f"t={t:.2f}s" for t in clip["timestamps"].tolist()]
    return image_grid(
        [
            ("frames", list(frames[0])),
            ("true features (PCA)", list(pca(feats[0], grid))),
            ("closed-loop recon.", [None, *pca(recon[0], grid)]),
        ],
        path,
        col_titles=times,
    )


# the clip source settings a world stage takes from the demo's: the same scenes, its own clip length
SCENE_KEYS = ("num_classes", "num_shapes", "object_speed", "event_rate", "event_turn", "event_speed")


def world_stage_overrides(cfg: DictConfig, accelerator: str) -> list[str]:
    """What both world stages add to `world_stage.overrides`: the demo's scenes, where to train, and
    the token cache they share (the same tokenizer, clips and seed give the same fingerprint, so the
    second stage reads the tokens the first one computed)."""
    source = OmegaConf.to_container(cfg.data.source, resolve=True)
    scene = [f"data.source.{key}={source[key]}" for key in SCENE_KEYS]
    cache = Path(cfg.out_dir) / "world_tokens.safetensors"
    return [
        *cfg.world_stage.overrides,
        *scene,
        f"trainer.accelerator={accelerator}",
        f"data.token_cache={{path:'{cache}',clips:{cfg.world_stage.cache_clips}}}",
    ]


def train_world(
    cfg: DictConfig, train_stage: TrainStage, tokenizer_path: Path, name: str, overrides: list[str]
) -> Path:
    """Train a world model on the demo's tokenizer with the `train` config and the given overrides."""
    run = [*overrides, f"tokenizer_ckpt={tokenizer_path}", f"run_dir={Path(cfg.out_dir) / name}", f"seed={cfg.seed}"]
    return train_stage(compose_config("train", run))


def pretrain_backbone(cfg: DictConfig, path: Path, device: torch.device) -> Path:
    """The demo's stand-in for a pretrained VFM: the random-init tiny backbone trained, with
    throw-away heads, on labelled synthetic frames (`backbone_stage`), then saved for the
    `backbone.checkpoint` of every later stage. Random features hash pixel patches: a sub-patch
    shift changes them as much as a new object does, so forecasting them says nothing about a
    scene, whereas a VFM's features move with what is in it. Nothing here sees evaluation clips."""
    stage = cfg.backbone_stage
    backbone = instantiate(cfg.backbone).to(device)
    train_set = instantiate(cfg.data.benchmark.train, num_clips=stage.num_clips)
    torch.manual_seed(cfg.seed)
    heads = build_heads(in_dim=backbone.dim, num_classes=train_set.num_classes, depth_range=train_set.depth_range)
    history = train_heads(
        backbone=backbone,
        heads=heads,
        dataset=train_set,
        epochs=stage.epochs,
        batch_size=stage.batch_size,
        lr=stage.lr,
        weight_decay=stage.weight_decay,
        seed=cfg.seed,
        device=device,
        train_backbone=True,
    )
    log.info("backbone pretraining losses per epoch: %s", history)
    return export_safetensors(backbone.model, path)


def run_demo(cfg: DictConfig, train_stage: TrainStage) -> Path:
    """`deltaworld demo` (conf/demo.yaml): every stage on synthetic labelled video, then the
    benchmark; returns report.md. `train_stage` fits one `train` config and returns its export
    (`deltaworld.tokenizer.fit.run_training`, handed in by the entry point: eval never trains a model)."""
    out_dir = Path(cfg.out_dir)
    device = resolve_device(cfg.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    with open_dict(cfg):
        cfg.run_dir = str(out_dir / "tokenizer")
        cfg.trainer.accelerator = accelerator
        if cfg.backbone_stage:
            cfg.backbone.checkpoint = str(pretrain_backbone(cfg, out_dir / "backbone.safetensors", device))
    tokenizer_path = train_stage(cfg)
    world_overrides = world_stage_overrides(cfg, accelerator)
    world_path = train_world(cfg, train_stage, tokenizer_path, "world", world_overrides)
    deterministic_path = train_world(
        cfg,
        train_stage,
        tokenizer_path,
        "deterministic",
        [*world_overrides, "world.deterministic=true", "module.num_hypotheses=1"],
    )

    backbone, deltatok = load_tokenizer(tokenizer_path, device)
    _, space, world, _ = load_world(world_path, device)
    _, _, deterministic, _ = load_world(deterministic_path, device)
    with open_dict(cfg):
        cfg.data.benchmark.eval.num_clips = cfg.eval.clips
        cfg.data.benchmark.eval.num_frames = cfg.eval.context + max(cfg.eval.horizons)
    eval_set = instantiate(cfg.data.benchmark.eval)
    heads, _ = fit_heads(
        backbone=backbone,
        backbone_cfg=read_metadata(tokenizer_path)["backbone"],
        frame_size=cfg.frame_size,
        train_set=instantiate(cfg.data.benchmark.train),
        eval_set=eval_set,
        path=out_dir / "heads.safetensors",
        num_workers=0,
        seed=cfg.seed,
        device=device,
        **cfg.heads_stage,
    )
    samples = cfg.world_stage.samples
    with torch.no_grad():
        tokenizer_png = tokenizer_figure(backbone, deltatok, eval_set[0], out_dir / "tokenizer_pca.png", device)
        methods = forecasting_methods(
            deltatok=deltatok,
            world=(space, world),
            deterministic=(space, deterministic),
            samples=samples,
            seed=cfg.seed,
            device=device,
        )
        report, _ = run_benchmark(
            backbone=backbone,
            heads=heads,
            dataset=eval_set,
            methods=methods,
            context=cfg.eval.context,
            horizons=list(cfg.eval.horizons),
            batch_size=cfg.eval.batch_size,
            num_workers=0,
            out_dir=out_dir,
            title=f"DeltaWorld demo (synthetic labelled video, {device.type.upper()})",
            world=(space, world),
            samples=samples,
            figure_clips=cfg.eval.figure_clips,
            seed=cfg.seed,
            device=device,
            figures={"DeltaTok: true vs closed-loop reconstructed features": tokenizer_png},
            training_runs={"world": world_path.parent, "deterministic": deterministic_path.parent},
            notes=[
                *(
                    [
                        f"backbone: the random-init tiny ViT trained {cfg.backbone_stage.epochs} epochs on "
                        f"{cfg.backbone_stage.num_clips} labelled synthetic frames (a stand-in for VFM pretraining), "
                        "then frozen for every stage: backbone.safetensors"
                    ]
                    if cfg.backbone_stage
                    else []
                ),
                f"the world models were trained {cfg.world_stage.overrides}; the deterministic one with one "
                "learned query (N=1), as many steps",
                f"weights: {tokenizer_path.relative_to(out_dir)}, {world_path.relative_to(out_dir)}, "
                f"{deterministic_path.relative_to(out_dir)}, heads.safetensors",
            ],
        )
    print(f"\nreport: {report}")
    return report
