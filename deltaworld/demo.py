"""`deltaworld demo`: the whole pipeline on CPU in minutes, ending in a report."""

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from data.stream import FixedClips
from deltaworld.sample import sample_and_describe
from deltaworld.train import run_training
from eval.figures import image_grid
from eval.forecast import evaluate_forecasts, tokenizer_ceiling
from eval.pca import PCAProjection
from eval.report import write_report
from tokenizer.checkpoint import load_tokenizer
from worldmodel.checkpoint import load_world
from worldmodel.sampling import copy_last, world_forecaster

log = logging.getLogger(__name__)


def eval_clips(cfg: DictConfig) -> FixedClips:
    """Evaluation clips long enough for `context` frames plus the largest horizon."""
    source_cfg = OmegaConf.to_container(cfg.data.source, resolve=True)
    source_cfg["num_frames"] = cfg.eval.context + max(cfg.eval.horizons)
    return FixedClips(instantiate(source_cfg), num_clips=cfg.eval.clips, seed=cfg.seed)


def tokenizer_figure(backbone, deltatok, clip: dict, path: Path) -> Path:
    """Frames, PCA of true features and of the closed-loop reconstruction from frame 0."""
    frames = clip["frames"][None]  # (1, T, 3, H, W)
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


def train_world(cfg: DictConfig, tokenizer_path: Path, name: str, overrides: list[str]) -> Path:
    """Train a world model on the demo's tokenizer with the `train` config and the given overrides."""
    world_cfg = compose(
        config_name="train",
        overrides=[*overrides, f"tokenizer_ckpt={tokenizer_path}", f"run_dir={Path(cfg.out_dir) / name}", f"seed={cfg.seed}"],
    )
    return run_training(world_cfg)


@torch.no_grad()
def run_demo(cfg: DictConfig) -> Path:
    out_dir = Path(cfg.out_dir)
    with open_dict(cfg):
        cfg.run_dir = str(out_dir / "tokenizer")
    tokenizer_path = run_training(cfg)
    world_path = train_world(cfg, tokenizer_path, "world", list(cfg.world_stage.overrides))
    deterministic_path = train_world(
        cfg, tokenizer_path, "deterministic", [*cfg.world_stage.overrides, "world.deterministic=true", "module.num_hypotheses=1"]
    )

    backbone, deltatok = load_tokenizer(tokenizer_path)
    _, space, world, _ = load_world(world_path)
    _, _, deterministic, _ = load_world(deterministic_path)
    samples = cfg.world_stage.samples
    generator = torch.Generator().manual_seed(cfg.seed)
    clips = eval_clips(cfg)
    records = evaluate_forecasts(
        backbone=backbone,
        batches=DataLoader(clips, batch_size=cfg.eval.batch_size),
        methods=[
            copy_last,
            tokenizer_ceiling(deltatok),
            world_forecaster(world, space, samples=samples, generator=generator),
            world_forecaster(deterministic, space, samples=1, name="deterministic"),
        ],
        context=cfg.eval.context,
        horizons=cfg.eval.horizons,
        dataset=cfg.eval.dataset,
    )
    clip, context = clips[0], cfg.eval.context
    times = clip["timestamps"][None]
    sample_and_describe(
        backbone, space, world, clip["frames"][None], times, times[:, context:], context=context, samples=samples,
        generator=torch.Generator().manual_seed(0), out_dir=out_dir, figure_name="world_hypotheses.png",
    )
    hypotheses_png = out_dir / "world_hypotheses.png"
    diversity = json.loads((out_dir / "diversity.json").read_text())
    figures = {
        "DeltaTok: true vs closed-loop reconstructed features": tokenizer_figure(backbone, deltatok, clips[0], out_dir / "tokenizer_pca.png"),
        f"DeltaWorld: {samples} sampled futures of one clip (first 8 rows), PCA shared with the true features": hypotheses_png,
    }
    spread = ", ".join(f"{v:.4f}" for v in diversity["pairwise_distance"])
    token_spread = ", ".join(f"{v:.4f}" for v in diversity["token_pairwise_distance"])
    report = write_report(
        out_dir,
        records,
        title="DeltaWorld demo (synthetic labelled video, CPU)",
        figures=figures,
        notes=[
            "feat_loss: MSE to the true features of the target frame (lower is better); feat_cos: mean per-patch cosine.",
            "copy_last repeats the last context frame; tokenizer codes the true future closed loop, each frame against the previous reconstruction (the ceiling of token prediction).",
            f"deltaworld_best: of {samples} sampled futures, the one closest to the truth at the target frame; deltaworld_mean: features averaged over the {samples}; deterministic: the same predictor with one learned query (N=1), trained as many steps.",
            f"diversity of the figure's clip, mean squared distance between two hypotheses per predicted step: features {spread}; tokens {token_spread} (diversity.json).",
            f"weights: {tokenizer_path.relative_to(out_dir)}, {world_path.relative_to(out_dir)}, {deterministic_path.relative_to(out_dir)}",
        ],
    )
    print(f"\nreport: {report}")
    return report


@hydra.main(config_path="pkg://conf", config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_demo(cfg)


if __name__ == "__main__":
    main()
