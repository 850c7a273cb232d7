"""`deltaworld demo` end to end on a tiny budget: every stage runs and hands its weights on."""

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file
from test_training import FAST
from test_world_training import WORLD_FAST

from deltaworld.eval.demo import run_demo
from deltaworld.eval.heads import load_heads
from deltaworld.eval.records import read_metrics
from deltaworld.tokenizer.checkpoint import load_tokenizer, read_metadata
from deltaworld.tokenizer.fit import run_training
from deltaworld.tokenizer.training import parameter_digest


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_demo_pretrains_the_stand_in_backbone_and_scores_every_method(tmp_path, device):
    with initialize_config_module(config_module="deltaworld.conf", version_base="1.3"):
        cfg = compose(
            config_name="demo",
            overrides=[
                *FAST,
                "trainer.max_steps=2",
                f"out_dir={tmp_path}",
                "run_dir=unused",
                f"device={device}",
                "backbone_stage.num_clips=8",
                "backbone_stage.epochs=1",
                "backbone_stage.batch_size=4",
                "heads_stage.epochs=1",
                "world_stage.samples=2",
                "world_stage.cache_clips=3",
                "eval.clips=2",
                "eval.batch_size=2",
                "eval.figure_clips=1",
            ],
        )
        with open_dict(cfg):
            cfg.world_stage.overrides = [*WORLD_FAST, "trainer.max_steps=2"]
        report = run_demo(cfg, train_stage=run_training)

    # the tokenizer and the heads stand on the pretrained stand-in, not on a fresh random init
    backbone_file = tmp_path / "backbone.safetensors"
    tokenizer_path = tmp_path / "tokenizer" / "tokenizer.safetensors"
    assert read_metadata(tokenizer_path)["backbone"]["checkpoint"] == str(backbone_file)
    backbone, _ = load_tokenizer(tokenizer_path)
    pretrained = load_file(str(backbone_file))
    assert all(v.equal(pretrained[k]) for k, v in backbone.model.state_dict().items())
    _, heads_meta = load_heads(tmp_path / "heads.safetensors")
    assert heads_meta["backbone_digest"] == parameter_digest(backbone)

    rows = {(r.method, r.metric, r.horizon) for r in read_metrics(tmp_path / "metrics.json")}
    methods = ["oracle", "copy_last", "tokenizer", "deltaworld_best", "deltaworld_mean", "deterministic"]
    assert {(m, k, h) for m in methods for k in ("miou", "depth_rmse") for h in (1, 3)} <= rows
    assert "| synthetic | deltaworld_best |" in report.read_text()
    accelerator = {"cpu": "cpu", "cuda": "gpu"}[device]
    for stage in ("tokenizer", "world", "deterministic"):  # every training stage ran where `device` says
        assert OmegaConf.load(tmp_path / stage / "config.yaml").trainer.accelerator == accelerator
    # both world stages trained on the demo's stochastic scenes, from the one token cache
    cache = tmp_path / "world_tokens.safetensors"
    assert cache.exists()
    for stage in ("world", "deterministic"):
        stage_cfg = OmegaConf.load(tmp_path / stage / "config.yaml")
        assert stage_cfg.data.token_cache.path == str(cache) and stage_cfg.data.token_cache.clips == 3
        assert stage_cfg.data.source.event_rate == cfg.data.source.event_rate > 0
