"""`deltaworld demo`: the whole pipeline on CPU in minutes, ending in a report."""

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from data.stream import FixedClips
from deltaworld.train import run_training
from eval.figures import image_grid
from eval.forecast import copy_last, evaluate_forecasts, tokenizer_ceiling
from eval.pca import PCAProjection
from eval.report import write_report
from tokenizer.checkpoint import load_tokenizer

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


@torch.no_grad()
def run_demo(cfg: DictConfig) -> Path:
    out_dir = Path(cfg.out_dir)
    with open_dict(cfg):
        cfg.run_dir = str(out_dir / "tokenizer")
    tokenizer_path = run_training(cfg)

    backbone, deltatok = load_tokenizer(tokenizer_path)
    clips = eval_clips(cfg)
    records = evaluate_forecasts(
        backbone=backbone,
        deltatok=deltatok,
        batches=DataLoader(clips, batch_size=cfg.eval.batch_size),
        methods=[copy_last, tokenizer_ceiling(deltatok)],
        context=cfg.eval.context,
        horizons=cfg.eval.horizons,
        dataset=cfg.eval.dataset,
    )
    figures = {"DeltaTok: true vs closed-loop reconstructed features": tokenizer_figure(backbone, deltatok, clips[0], out_dir / "tokenizer_pca.png")}
    report = write_report(
        out_dir,
        records,
        title="DeltaWorld demo (synthetic labelled video, CPU)",
        figures=figures,
        notes=[
            "feat_loss: MSE to the true features of the target frame (lower is better); feat_cos: mean per-patch cosine.",
            "copy_last repeats the last context frame; tokenizer codes the true future closed loop, each frame against the previous reconstruction (the ceiling of token prediction).",
            f"tokenizer weights: {tokenizer_path.relative_to(out_dir)}",
        ],
    )
    print(f"\nreport: {report}")
    return report


@hydra.main(config_path="pkg://conf", config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_demo(cfg)


if __name__ == "__main__":
    main()
