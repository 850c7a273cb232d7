"""Training from Hydra configs: presets compose, runs resume exactly, sweeps and DDP work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from deltaworld.cli import main as cli_main
from deltaworld.tokenizer.checkpoint import load_tokenizer
from deltaworld.tokenizer.fit import run_training

from conftest import compose_train

ROOT = Path(__file__).resolve().parents[1]
# tiny, fast, quiet: 2x2 patch grid, 3-frame clips
FAST = [
    "experiment=cpu_demo",
    "frame_size=28",
    "data.batch_size=2",
    "data.source.num_frames=3",
    "data.val_clips=2",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=4",
    "~callbacks.progress_bar",
    "trainer.enable_model_summary=false",
]


def losses(run_dir: Path) -> dict[int, float]:
    """train/loss by step over every CSV segment of a run (a resumed run has several)."""
    out = {}
    for csv in sorted((run_dir / "csv").glob("*/metrics.csv")):
        lines = csv.read_text().splitlines()
        header = lines[0].split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=True))
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


def test_every_preset_composes(tmp_path):
    presets = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    assert {"cpu_demo", "paper"} <= set(presets)
    for preset in presets:
        cfg = compose_train([f"experiment={preset}", f"++data.root={tmp_path / 'videos'}"], tmp_path)
        assert cfg.module._target_ and cfg.trainer._target_ == "lightning.Trainer"
        if "root" in cfg.data.source:  # a folder source: its clear error, since no folder exists here
            with pytest.raises(InstantiationException, match="video folder .* does not exist"):
                instantiate(cfg.data.source)
        else:  # every key a preset sets must fit the source it ends up with
            clip = instantiate(cfg.data.source).sample_clip(np.random.default_rng(0))
            assert clip["frames"].shape[0] == cfg.data.source.num_frames, preset
    paper = compose_train(["experiment=paper", "++data.root=/videos"], tmp_path)
    effective = paper.data.batch_size * paper.trainer.accumulate_grad_batches * paper.trainer.devices
    assert effective == 1024 and paper.backbone.name == "vit_base_patch14_dinov2"
    assert paper.module.optimizer.lr == 1e-3 and paper.trainer.gradient_clip_val == 1e-2
    with initialize_config_module(config_module="deltaworld.conf", version_base="1.3"):
        demo = compose(config_name="demo", overrides=["out_dir=/tmp/x", "run_dir=/tmp/x"])
        assert demo.backbone.arch.depth == 2  # the cpu_demo preset is applied
        dinov3 = compose(config_name="train", overrides=["backbone=dinov3_base", "run_dir=/tmp/x"])
        assert dinov3.backbone.name == "vit_base_patch16_dinov3"


def test_submitit_launchers_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_module(config_module="deltaworld.conf", version_base="1.3"):
        for launcher in ["submitit_slurm", "submitit_local", "slurm_gpu"]:
            cfg = compose(
                config_name="train", overrides=[f"hydra/launcher={launcher}", "run_dir=/x"], return_hydra_config=True
            )
            assert "submitit" in cfg.hydra.launcher._target_.lower()


def test_train_export_and_reload(tmp_path):
    cfg = compose_train([*FAST, "trainer.max_steps=4"], tmp_path)
    export = run_training(cfg)
    backbone, deltatok = load_tokenizer(export)
    assert not any(p.requires_grad for p in deltatok.parameters())
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert not any(k.startswith("backbone.") for k in ckpt["state_dict"])  # frozen part not stored
    for key, value in deltatok.state_dict().items():
        torch.testing.assert_close(ckpt["state_dict"][f"deltatok.{key}"], value)
    assert not list(tmp_path.glob("checkpoints/*.tmp"))  # atomic writes leave no partial files


def test_resume_reproduces_uninterrupted_run(tmp_path):
    common = [*FAST, "callbacks.model_checkpoint.every_n_train_steps=3"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_training(compose_train([*common, "trainer.max_steps=8"], straight))
    run_training(compose_train([*common, "trainer.max_steps=3"], interrupted))
    run_training(compose_train([*common, "trainer.max_steps=8"], interrupted))  # resume=auto
    a, b = losses(straight), losses(interrupted)
    assert sorted(a) == sorted(b) == list(range(8))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    wa = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=1e-5)


def cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "deltaworld.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_cli_help_lists_commands(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("train", "demo", "sample", "bench"))
    assert cli_main(["nope"]) == 2


@pytest.mark.slow
def test_two_job_multirun(tmp_path):
    cli(
        ["train", "-m", *FAST, "tokenizer.depth=1,2", "trainer.max_steps=2", f"hydra.sweep.dir={tmp_path}"],
        cwd=tmp_path,
    )
    for job in ("0", "1"):
        cfg = (tmp_path / job / "config.yaml").read_text()
        assert (tmp_path / job / "tokenizer.safetensors").is_file()
        assert f"depth: {int(job) + 1}" in cfg


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_identical_weights(tmp_path):
    cli(
        [
            "train",
            *FAST,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=3",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
    )
    digests = json.loads((tmp_path / "rank_sync.json").read_text())["digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
