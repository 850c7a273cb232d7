"""World-model stage end to end: train on a frozen tokenizer (frames or token cache), export, sample."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_training import FAST, cli

from deltaworld.data.token_cache import StaleCacheError, read_token_cache, write_token_cache
from deltaworld.tokenizer.fit import run_training
from deltaworld.worldmodel.checkpoint import load_world

from conftest import compose_train, synthetic_batch

# 6-frame clips: context 2 + horizon up to 3 in validation
WORLD_FAST = [
    "experiment=world_cpu_demo",
    "frame_size=28",
    "data.batch_size=2",
    "data.source.num_frames=6",
    "data.val_clips=2",
    "module.num_hypotheses=4",
    "module.eval_samples=3",
    "module.eval_context=2",
    "world.dim=32",
    "world.depth=1",
    "world.num_heads=2",
    "world.rope_dim=12",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=3",
    "~callbacks.progress_bar",
    "trainer.enable_model_summary=false",
]


@pytest.fixture(scope="module")
def tokenizer_ckpt(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tokenizer")
    return run_training(compose_train([*FAST, "trainer.max_steps=2"], run_dir))


def test_stale_cache_is_refused_naming_the_field(tmp_path):
    path = write_token_cache(
        tmp_path / "c.safetensors", {"tokens": torch.zeros(2, 3, 1, 4)}, {"tokenizer_weights": "aaa", "clips": 2}
    )
    assert read_token_cache(path, {"tokenizer_weights": "aaa", "clips": 2})["tokens"].shape == (2, 3, 1, 4)
    with pytest.raises(StaleCacheError, match="tokenizer_weights: cache has 'aaa', this run needs 'bbb'"):
        read_token_cache(path, {"tokenizer_weights": "bbb", "clips": 2})


def test_world_trains_from_token_cache_exports_and_samples(tmp_path, tokenizer_ckpt):
    cache = tmp_path / "tokens.safetensors"
    overrides = [
        *WORLD_FAST,
        f"tokenizer_ckpt={tokenizer_ckpt}",
        "trainer.max_steps=3",
        f"data.token_cache={{path: {cache}, clips: 4}}",
    ]
    export = run_training(compose_train(overrides, tmp_path / "run"))
    cached = load_file(str(cache))
    assert cached["tokens"].shape == (4, 6, 1, 64) and cached["timestamps"].shape == (4, 6)

    backbone, space, world, meta = load_world(export)
    assert meta["space"] == "delta" and world.tokens_per_frame == 1
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert not any(k.startswith(("backbone.", "deltatok.")) for k in ckpt["state_dict"])  # frozen parts not stored
    for key, value in world.state_dict().items():
        torch.testing.assert_close(ckpt["state_dict"][f"world.{key}"], value)
    metrics = (tmp_path / "run" / "csv").glob("*/metrics.csv")
    header = next(metrics).read_text().splitlines()[0]
    for name in (
        "train/loss_best_of_n",
        "train/loss_mean_hypothesis",
        "val/feat_loss_deltaworld_best_h1",
        "val/feat_loss_copy_last_h3",
    ):
        assert name in header

    # the same cache path with another tokenizer is stale: refused, not reused
    other = run_training(compose_train([*FAST, "trainer.max_steps=2", "seed=1"], tmp_path / "other_tokenizer"))
    with pytest.raises(StaleCacheError, match="tokenizer_weights"):
        run_training(
            compose_train(
                [
                    *overrides[:-3],
                    f"tokenizer_ckpt={other}",
                    "trainer.max_steps=3",
                    f"data.token_cache={{path: {cache}, clips: 4}}",
                ],
                tmp_path / "run2",
            )
        )

    out = tmp_path / "sample"
    cli(["sample", f"world_ckpt={export}", "context=2", "horizon=3", "samples=5", f"out_dir={out}"], cwd=tmp_path)
    stats = json.loads((out / "diversity.json").read_text())
    assert stats["samples"] == 5 and len(stats["pairwise_distance"]) == 3 and len(stats["best_to_truth"]) == 3
    assert len(stats["token_pairwise_distance"]) == 3
    saved = load_file(str(out / "samples.safetensors"))
    assert saved["tokens"].shape == (5, 3, 1, 64) and saved["features"].shape == (5, 3, 4, 64)
    assert (out / "hypotheses.png").stat().st_size > 0


def test_world_stage_keeps_backbone_and_tokenizer_frozen(tmp_path, tokenizer_ckpt):
    from hydra.utils import instantiate

    cfg = compose_train([*WORLD_FAST, f"tokenizer_ckpt={tokenizer_ckpt}", "module.space=patches"], tmp_path)
    module = instantiate(cfg.module).train()
    assert module.world.tokens_per_frame == 4 and module.world.token_dim == 64  # patch tokens of a 2x2 grid
    frozen = [*module.backbone.parameters(), *module.deltatok.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert not module.backbone.training and not module.deltatok.training
    before = [p.clone() for p in frozen]
    batch = synthetic_batch(batch=2, frames=6, size=28)
    opt = torch.optim.SGD(module.world.parameters(), lr=1.0)
    module.training_step(batch, 0).backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, frozen, strict=True))
    assert all(p.grad is None for p in frozen)


def test_world_export_records_the_frame_size_it_trained_at(tmp_path, tokenizer_ckpt):
    overrides = [*WORLD_FAST, f"tokenizer_ckpt={tokenizer_ckpt}", "trainer.max_steps=1", "frame_size=42"]
    export = run_training(compose_train(overrides, tmp_path / "run"))
    assert load_world(export)[3]["frame_size"] == 42  # not the tokenizer's 28
