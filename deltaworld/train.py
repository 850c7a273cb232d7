"""`deltaworld train`: instantiate data, module, trainer from the config and fit."""

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from deltaworld.tokenizer.checkpoint import AtomicCheckpointIO, export_safetensors

log = logging.getLogger(__name__)


def resume_path(cfg: DictConfig) -> str | None:
    if cfg.resume in (None, False):
        return None
    if cfg.resume == "auto":
        last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(cfg.resume).is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {cfg.resume}")
    return str(cfg.resume)


def training_data(cfg: DictConfig) -> dict:
    """The data config without its `benchmark` block (the labelled sets of `deltaworld heads/eval`)."""
    data = OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True)
    data.pop("benchmark", None)
    return data


def run_training(cfg: DictConfig) -> Path:
    """Fit one stage; returns the path of the exported weights (safetensors, config embedded)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(training_data(cfg))
    module = instantiate(cfg.module)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    ckpt = resume_path(cfg)
    if ckpt:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)

    export = run_dir / cfg.export_name
    if trainer.is_global_zero:
        stage_cfg = OmegaConf.to_container(cfg, resolve=True)
        export_safetensors(module.exported(), export, metadata=module.export_metadata(stage_cfg))
        log.info("exported %s", export)
    return export


@hydra.main(config_path="pkg://deltaworld.conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_training(cfg)


if __name__ == "__main__":
    main()
