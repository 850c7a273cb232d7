"""Fitting the linear heads end to end: train on a labelled set's frozen features, score on its
evaluation clips, save them with the backbone's config and weight digest (`deltaworld heads`, and
the demo's heads stage)."""

from pathlib import Path

import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import Dataset

from deltaworld.eval.device import resolve_device
from deltaworld.eval.heads import build_heads, save_heads
from deltaworld.eval.records import Record, metrics_table
from deltaworld.eval.train_heads import evaluate_heads, train_heads
from deltaworld.tokenizer.backbone import Backbone
from deltaworld.tokenizer.checkpoint import load_tokenizer, read_metadata
from deltaworld.tokenizer.training import parameter_digest


def heads_backbone(cfg: DictConfig) -> tuple[Backbone, dict]:
    """The frozen backbone the heads train on and its config: from `backbone_from` (a tokenizer or
    world export, whose frame size then applies) or from the `backbone` group."""
    if cfg.backbone_from:
        backbone = load_tokenizer(cfg.backbone_from)[0]  # checks the file first
        meta = read_metadata(cfg.backbone_from)
        with open_dict(cfg):
            cfg.frame_size = meta["frame_size"]
        return backbone, meta["backbone"]
    return instantiate(cfg.backbone), OmegaConf.to_container(cfg.backbone, resolve=True)


def fit_heads(
    *,
    backbone: Backbone,
    backbone_cfg: dict,
    frame_size: int,
    train_set: Dataset,
    eval_set: Dataset,
    path: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    num_workers: int,
    seed: int,
    device: torch.device,
) -> tuple[nn.ModuleDict, list[Record]]:
    """Train heads for what `train_set` labels (and an RGB head, for figures), score them on
    `eval_set`'s labelled frames, save them to `path` (with the backbone's config and weight digest)
    and print the scores."""
    torch.manual_seed(seed)  # the heads' initial weights
    heads = build_heads(
        in_dim=backbone.dim,
        num_classes=train_set.num_classes,
        depth_range=train_set.depth_range,
        rgb_patch=backbone.patch_size,
    )
    history = train_heads(
        backbone=backbone,
        heads=heads,
        dataset=train_set,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        num_workers=num_workers,
        seed=seed,
        device=device,
    )
    records = evaluate_heads(
        backbone=backbone, heads=heads, dataset=eval_set, batch_size=batch_size, num_workers=num_workers, device=device
    )
    scores = {r.metric: r.value for r in records}
    save_heads(
        heads.cpu(),
        path,
        {
            "backbone": backbone_cfg,
            "backbone_digest": parameter_digest(backbone),
            "frame_size": frame_size,
            "dataset": train_set.name,
            "train_losses": history,
            "eval": scores,
        },
    )
    print(metrics_table(records))
    print(f"heads: {path}")
    return heads.to(device), records


def run_heads(cfg: DictConfig) -> Path:
    """`deltaworld heads` (conf/heads.yaml): fit the heads of cfg.data's labelled sets; returns their file."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    backbone, backbone_cfg = heads_backbone(cfg)
    path = out_dir / cfg.export_name
    fit_heads(
        backbone=backbone.to(device),
        backbone_cfg=backbone_cfg,
        frame_size=cfg.frame_size,
        train_set=instantiate(cfg.data.benchmark.train),
        eval_set=instantiate(cfg.data.benchmark.eval),
        path=path,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        device=device,
    )
    return path
