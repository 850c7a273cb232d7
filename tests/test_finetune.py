"""Fine-tuning from weights (`init_from=`) and the shared optimizer/schedule of every stage: the weights
load strictly into a fresh run (step 0, new optimizer and schedule) at another frame size, from
exports, Lightning checkpoints and imported released models; a restarted fine-tune resumes instead."""

import re

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from test_training import FAST
from test_world_training import WORLD_FAST

from deltaworld.cli import main as cli_main
from deltaworld.tokenizer.checkpoint import export_safetensors, strip_prefix
from deltaworld.tokenizer.fit import run_training

from conftest import REFERENCE, compose_train


class StartState(L.Callback):
    """Saves the step and the trained module's weights as training starts (after any restore)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = {k: v.detach().clone() for k, v in pl_module.trainable().state_dict().items()}
        torch.save({"step": trainer.global_step, "weights": weights}, self.path)


def with_start_state(overrides: list[str], path) -> list[str]:
    return [*overrides, f"+callbacks.start={{_target_: test_finetune.StartState, path: '{path}'}}"]


def assert_same(weights: dict, expected: dict) -> None:
    assert sorted(weights) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def tokenizer_export(tmp_path_factory):
    """A tiny tokenizer trained 2 steps at 28 px (2x2 patches of 14)."""
    return run_training(compose_train([*FAST, "trainer.max_steps=2"], tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def world_export(tmp_path_factory, tokenizer_export):
    run_dir = tmp_path_factory.mktemp("world")
    return run_training(
        compose_train([*WORLD_FAST, f"tokenizer_ckpt={tokenizer_export}", "trainer.max_steps=2"], run_dir)
    )


def test_tokenizer_finetunes_at_another_frame_size_then_resumes(tmp_path, tokenizer_export):
    start = tmp_path / "start.pt"
    run_dir = tmp_path / "finetune"
    common = [*FAST, "frame_size=56", f"init_from={tokenizer_export}"]  # 4x4 patches now
    run_training(compose_train(with_start_state([*common, "trainer.max_steps=1"], start), run_dir))
    state = torch.load(start, weights_only=True)
    assert state["step"] == 0
    assert_same(state["weights"], load_file(str(tokenizer_export)))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1
    assert {s["step"].item() for s in ckpt["optimizer_states"][0]["state"].values()} == {1.0}  # a fresh AdamW
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 1  # a fresh warmup
    assert not torch.equal(ckpt["state_dict"]["deltatok.z_embed.weight"], state["weights"]["z_embed.weight"])

    # restarted (resume=auto), the fine-tune continues from its last.ckpt: init_from is not applied again
    run_training(compose_train(with_start_state([*common, "trainer.max_steps=2"], start), run_dir))
    state = torch.load(start, weights_only=True)
    assert state["step"] == 1
    assert_same(state["weights"], strip_prefix(ckpt["state_dict"], "deltatok."))
    with pytest.raises(ValueError, match="both name a starting point"):
        run_training(compose_train([*common, f"resume={run_dir / 'checkpoints' / 'last.ckpt'}"], tmp_path / "other"))


def test_world_finetunes_from_a_world_export(tmp_path, tokenizer_export, world_export):
    start = tmp_path / "start.pt"
    overrides = [*WORLD_FAST, f"tokenizer_ckpt={tokenizer_export}", f"init_from={world_export}", "trainer.max_steps=1"]
    run_training(compose_train(with_start_state(overrides, start), tmp_path / "run"))
    state = torch.load(start, weights_only=True)
    assert state["step"] == 0
    assert_same(state["weights"], strip_prefix(load_file(str(world_export)), "world."))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1 and ckpt["lr_schedulers"][0]["last_epoch"] == 1


def test_tokenizer_stage_takes_deltatok_from_a_world_export_or_a_checkpoint(tmp_path, tokenizer_export, world_export):
    module = instantiate(compose_train([*FAST, "frame_size=42"], tmp_path).module)
    module.load_initial_weights(world_export)
    assert_same(module.deltatok.state_dict(), strip_prefix(load_file(str(world_export)), "deltatok."))
    last = tokenizer_export.parent / "checkpoints" / "last.ckpt"
    module.load_initial_weights(last)
    assert_same(
        module.deltatok.state_dict(), strip_prefix(torch.load(last, weights_only=True)["state_dict"], "deltatok.")
    )


def test_weights_that_do_not_fit_are_refused_listing_every_problem(tmp_path, tokenizer_export, world_export):
    module = instantiate(compose_train(FAST, tmp_path).module)
    weights = load_file(str(tokenizer_export))
    del weights["z_embed.weight"]
    weights["extra.weight"] = torch.zeros(1)
    weights["norm.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.safetensors"
    save_file(weights, str(bad))
    with pytest.raises(ValueError) as err:
        module.load_initial_weights(bad)
    message = str(err.value)
    assert str(bad) in message and "1 missing: z_embed.weight" in message and "1 unexpected: extra.weight" in message
    assert "norm.weight (3,) != (64,)" in message

    world = instantiate(compose_train([*WORLD_FAST, f"tokenizer_ckpt={tokenizer_export}"], tmp_path).module)
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(tokenizer_export))} does not fit the DeltaWorld .* missing: "
    ):
        world.load_initial_weights(tokenizer_export)  # a tokenizer export carries no world model


def fresh_module(cfg: DictConfig, seed: int) -> L.LightningModule:
    torch.manual_seed(seed)  # another random init than the source's, so a load that did nothing fails
    return instantiate(cfg.module)


def test_pixel_stages_load_their_exports(tmp_path):
    pixel = ["experiment=pixel_actions_cpu", "frame_size=16", "tokenizer.patch_size=4"]
    cfg = compose_train(pixel, tmp_path)
    source = fresh_module(cfg, seed=0)
    tok_path = export_safetensors(
        source.exported(),
        tmp_path / "tokenizer.safetensors",
        metadata=source.export_metadata(OmegaConf.to_container(cfg, resolve=True)),
    )
    fresh = fresh_module(compose_train([*pixel, "frame_size=32"], tmp_path), seed=1)
    fresh.load_initial_weights(tok_path)
    assert_same(fresh.tokenizer.state_dict(), source.tokenizer.state_dict())

    world_cfg = compose_train(
        [
            "experiment=pixel_world_actions_cpu",
            f"tokenizer_ckpt={tok_path}",
            "world.dim=32",
            "world.depth=1",
            "world.num_heads=2",
            "world.rope_dim=12",
        ],
        tmp_path,
    )
    world = fresh_module(world_cfg, seed=0)
    world_path = export_safetensors(world.exported(), tmp_path / "world.safetensors")
    other = fresh_module(world_cfg, seed=1)
    other.load_initial_weights(world_path)
    assert_same(other.world.state_dict(), world.world.state_dict())


def test_every_stage_builds_its_optimizer_and_schedule_from_the_config(tmp_path):
    cfg = compose_train(
        [*FAST, "module.optimizer.lr=3e-4", "scheduler@module.scheduler=warmup_cosine", "trainer.max_steps=150"],
        tmp_path,
    )
    module = instantiate(cfg.module)
    assert "optimizer" not in module.hparams and "scheduler" not in module.hparams  # plain hparams only
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and configured["lr_scheduler"]["interval"] == "step"
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (1e-2, 0.0)  # cpu_demo's tokenizer stage
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in module.deltatok.parameters()}  # the frozen backbone is not there
    lrs = []
    for _ in range(150):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(3e-4 / 50) and lrs[49] == pytest.approx(3e-4)  # cpu_demo's 50 warmup steps
    assert lrs[100] == pytest.approx(1.5e-4) and lrs[-1] < 1e-6  # cosine to 0 at trainer.max_steps


@pytest.mark.usefixtures("reference_dir")
def test_imported_released_models_fine_tune(tmp_path, caplog):
    """`deltaworld import-official` exports (the reference's tiny weights) work as init_from."""
    deltatok = load_file(str(REFERENCE / "deltatok_tiny.safetensors"))
    predictor = load_file(str(REFERENCE / "predictor_tiny.safetensors"))
    torch.save({k: v for k, v in deltatok.items() if not k.startswith("test.")}, tmp_path / "deltatok.bin")
    torch.save(
        {"state_dict": {f"predictor.{k}": v for k, v in predictor.items() if not k.startswith("test.")}},
        tmp_path / "predictor.bin",
    )
    out = tmp_path / "imported"
    cli_main(
        [
            "import-official",
            f"tokenizer_ckpt={tmp_path / 'deltatok.bin'}",
            f"world_ckpt={tmp_path / 'predictor.bin'}",
            f"out={out}",
            "experiment=reference_tiny",
        ]
    )

    tokenizer = instantiate(compose_train(["experiment=reference_tiny", "frame_size=128"], tmp_path).module)
    tokenizer.load_initial_weights(out / "tokenizer.safetensors")
    assert_same(tokenizer.deltatok.state_dict(), load_file(str(out / "tokenizer.safetensors")))
    world_cfg = compose_train(
        [
            "experiment=reference_world",
            f"tokenizer_ckpt={out / 'tokenizer.safetensors'}",
            "world.dim=64",
            "world.depth=2",
            "world.num_heads=4",
            "world.rope_dim=12",
        ],
        tmp_path,
    )
    world = instantiate(world_cfg.module)
    world_weights = load_file(str(out / "world.safetensors"))
    world.load_initial_weights(out / "world.safetensors")
    assert_same(world.world.state_dict(), strip_prefix(world_weights, "world."))
    assert "differs" not in caplog.text

    # a world model trained on another tokenizer's tokens loads, with a warning
    world_weights["deltatok.z_embed.weight"] += 1
    save_file(world_weights, str(tmp_path / "other_world.safetensors"))
    world.load_initial_weights(tmp_path / "other_world.safetensors")
    assert "its deltatok differs from this run's (frozen) one" in caplog.text
