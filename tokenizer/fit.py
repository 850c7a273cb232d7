"""Fit one training stage from its composed config: the logic behind `deltaworld train`.

Every stage (tokenizer, world model, pixel codec, action world model) runs through `run_training`:
data, module, callbacks, loggers and trainer come from `_target_` configs, the run folder is
claimed for this run (see run_folder), and the trained module is exported as safetensors.
"""

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from deltaworld.tokenizer.checkpoint import AtomicCheckpointIO, atomic_write_text, export_safetensors
from deltaworld.tokenizer.run_folder import (
    CONFIG_FILE,
    RunFolderError,
    RunFolderLock,
    check_config,
    clean_stale_temporaries,
    loads,
    newest_loadable_checkpoint,
)

log = logging.getLogger(__name__)


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint `resume=` names. auto: the newest checkpoint of the run folder that loads
    (`last.ckpt`, or after a crash or a full disk the newest step checkpoint), else none."""
    if cfg.resume in (None, False):
        return None
    if cfg.resume == "auto":
        found, damaged = newest_loadable_checkpoint(Path(cfg.run_dir) / "checkpoints")
        for path in damaged:
            log.warning("resume=auto: %s does not load (damaged or incomplete); trying an older checkpoint", path)
        return None if found is None else str(found)
    path = Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    if not loads(path):
        raise RunFolderError(
            f"resume checkpoint {path} does not load (empty, truncated or not a training checkpoint); "
            "pass another one, or resume=auto for the newest one of the run folder that loads"
        )
    return str(path)


def training_data(cfg: DictConfig) -> dict:
    """The data config without its `benchmark` block (the labelled sets of `deltaworld heads/eval`)."""
    data = OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True)
    data.pop("benchmark", None)
    return data


def claim_run_folder(cfg: DictConfig) -> RunFolderLock | None:
    """Lock the run folder, refuse a config other than the one it holds, clean what an interrupted
    write left, and record the config, all before anything else is written. Rank 0 only: the
    other DDP ranks are processes of the same run."""
    if rank_zero_only.rank != 0:
        return None
    run_dir = Path(cfg.run_dir)
    lock = RunFolderLock(run_dir)
    try:
        current = OmegaConf.to_container(cfg, resolve=True)
        stored_path = run_dir / CONFIG_FILE
        check_config(
            run_dir, current, OmegaConf.to_container(OmegaConf.load(stored_path)) if stored_path.is_file() else None
        )
        for path in clean_stale_temporaries(run_dir):
            log.info("removed %s, left by an interrupted write", path)
        atomic_write_text(stored_path, OmegaConf.to_yaml(current))
    except BaseException:
        lock.release()
        raise
    return lock


def run_training(cfg: DictConfig) -> Path:
    """Fit one stage; returns the path of the exported weights (safetensors, config embedded).

    `init_from=<file>` fine-tunes (`load_initial_weights`: weights only, step 0, fresh optimizer and
    schedule); `resume` restores a whole run. An explicit `resume=<file.ckpt>` with `init_from` is
    refused; with `resume=auto`, a checkpoint in the run folder wins, so a restarted fine-tune continues.
    """
    init_from = cfg.get("init_from")
    if init_from and cfg.resume not in (None, False, "auto"):
        raise ValueError(f"init_from={init_from} and resume={cfg.resume} both name a starting point: pass one")
    ckpt = resume_path(cfg)  # a resume file that does not load is refused before the folder is touched
    lock = claim_run_folder(cfg)
    try:
        L.seed_everything(cfg.seed, workers=True)
        run_dir = Path(cfg.run_dir)
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
        if ckpt:
            # a restarted fine-tune must continue where it stopped, not start over from init_from
            log.info("resuming from %s%s", ckpt, f" (init_from={init_from} is not used)" if init_from else "")
        elif init_from:
            module.load_initial_weights(init_from)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)

        export = run_dir / cfg.export_name
        if trainer.is_global_zero:
            stage_cfg = OmegaConf.to_container(cfg, resolve=True)
            export_safetensors(module.exported(), export, metadata=module.export_metadata(stage_cfg))
            log.info("exported %s", export)
        return export
    finally:
        if lock is not None:
            lock.release()
