"""Key-frame token layouts in DeltaWorld (a first frame with more tokens, the seed's 976-token clip)
and the feature-space action world model (WorldModule with action_dim > 0), on tiny random models."""

from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_schema import edited
from test_worldmodel import irregular_times, strengthen

from deltaworld.data.actions import ActionSource
from deltaworld.data.shard_stream import ShardStream
from deltaworld.data.stream import FixedClips
from deltaworld.data.token_cache import CachedClipStream, build_token_cache, decode_cached, read_token_cache
from deltaworld.tokenizer.checkpoint import export_safetensors, read_metadata
from deltaworld.tokenizer.fit import run_training
from deltaworld.tokenizer.losses import feature_loss
from deltaworld.tokenizer.module import TokenizerModule
from deltaworld.tokenizer.pixel import PixelDeltaToken, to_unit
from deltaworld.tokenizer.schema import SchemaError
from deltaworld.worldmodel.checkpoint import load_world
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.module import WorldModule, action_futures

from conftest import FRAME, OPTIMIZATION, compose_train, make_deltatok

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* RANDOMLY INITIALISED")
SMOOTH_L1 = feature_loss("smooth_l1", beta=0.1)
K0, K, C = 6, 2, 8  # a key frame of 6 tokens, 2 a frame after


def key_world(key_tokens: int | None = K0, **kw) -> DeltaWorld:
    torch.manual_seed(0)
    world = DeltaWorld(token_dim=C, tokens_per_frame=K, key_tokens=key_tokens, dim=32, depth=2, num_heads=2, rope_dim=8)
    return strengthen(world).eval()


def key_clip(b: int, t: int, seed: int = 0) -> torch.Tensor:
    """A 1D sequence (B, K0 + (T-1) K, C) whose later frames follow from the key frame: frame t's
    slot j is key token j + t * key token j + K (only the key frame makes the clip predictable)."""
    key = torch.randn(b, K0, C, generator=torch.Generator().manual_seed(seed))
    steps = torch.arange(1, t, dtype=torch.float32)[None, :, None, None]
    later = key[:, None, :K] + 0.3 * steps * key[:, None, K : 2 * K]  # (B, T-1, K, C)
    return torch.cat((key, later.flatten(1, 2)), 1)


def test_key_frame_layout_trains_and_samples():
    world = key_world().train()
    tokens, times = key_clip(8, 5), irregular_times(8, 5)
    assert world.token_frames(5).tolist() == [0] * K0 + [1, 1, 2, 2, 3, 3, 4, 4]
    opt = torch.optim.AdamW(world.parameters(), lr=3e-3)
    first = None
    for step in range(60):
        loss, stats = world.teacher_forced_loss(
            tokens, times, num_hypotheses=4, loss_fn=SMOOTH_L1, generator=torch.Generator().manual_seed(step)
        )
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stats["loss_best_of_n"] <= stats["loss_mean_hypothesis"]
    assert loss.item() < 0.5 * first, (first, loss.item())
    world.eval()
    context = tokens[:, : K0 + 2 * K]  # the key frame and 2 frames: 3 context frames
    noise = world.draw_noise((8, 4, 2), generator=torch.Generator().manual_seed(0))
    cached = world.rollout(context, times[:, :3], times[:, 3:], samples=4, noise=noise)
    full = world.rollout(context, times[:, :3], times[:, 3:], samples=4, noise=noise, use_cache=False)
    assert cached.shape == (8, 4, 2, K, C)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="1D sequence"):
        world.rollout(context[:, :-1], times[:, :3], times[:, 3:], samples=1)


@torch.no_grad()
def test_key_frame_layout_is_causal_and_scored_as_a_brute_force_loop():
    world, (b, t, s) = key_world(), (2, 5, 3)
    tokens, times = torch.randn(b, K0 + (t - 1) * K, C), irregular_times(b, t)
    context, targets = world.split_first_frame(tokens, t)
    assert context.shape == (b, K0 + (t - 2) * K, C) and targets.shape == (b, t - 1, K, C)
    noise = world.draw_noise((b, t - 1, s), generator=torch.Generator().manual_seed(1)) * 20

    def predict(ctx: torch.Tensor) -> torch.Tensor:
        return world.predict(world.queries(noise), times[:, 1:], context=ctx, context_times=times[:, :-1], causal=True)

    out = predict(context)
    changed = context.clone()
    changed[:, K0 + K : K0 + 2 * K] += 5.0  # the tokens of frame 2
    out2 = predict(changed)
    torch.testing.assert_close(out[:, :2], out2[:, :2])  # predictions of frames 1 and 2
    assert not torch.allclose(out[:, 2:], out2[:, 2:])
    key_changed = context.clone()
    key_changed[:, K0 - 1] += 5.0  # the last key-frame token: every prediction sees it
    assert not torch.isclose(predict(key_changed), out).flatten(2).all(-1).any()

    losses = world.hypothesis_losses(noise, context, times[:, :-1], targets, times[:, 1:], SMOOTH_L1)
    brute = torch.empty(b, t - 1, s)
    for frame in range(t - 1):  # only its own past (key frame + `frame` frames), no mask
        for hyp in range(s):
            pred = world.predict(
                world.queries(noise[:, frame, hyp])[:, None, None],
                times[:, frame + 1, None],
                context=tokens[:, : K0 + frame * K],
                context_times=times[:, : frame + 1],
            )
            brute[:, frame, hyp] = SMOOTH_L1(pred[:, 0, 0], targets[:, frame]).mean((-2, -1))
    torch.testing.assert_close(losses, brute, atol=1e-5, rtol=1e-4)


def test_uniform_sequence_equals_the_per_frame_path_bit_for_bit():
    """K0 == K: a clip's 1D sequence gives exactly the per-frame path's loss, gradients and rollouts."""
    world = key_world(key_tokens=K).train()
    tokens, times = torch.randn(2, 5, K, C), irregular_times(2, 5)
    results = []
    for clip in (tokens, tokens.flatten(1, 2)):
        world.zero_grad()
        loss, stats = world.teacher_forced_loss(
            clip, times, num_hypotheses=4, loss_fn=SMOOTH_L1, generator=torch.Generator().manual_seed(0)
        )
        loss.backward()
        grads = [p.grad.clone() for p in world.parameters()]
        context = clip[:, :3] if clip.dim() == 4 else clip[:, : 3 * K]
        rollouts = [
            world.rollout(
                context, times[:, :3], times[:, 3:], samples=3, generator=torch.Generator().manual_seed(1), use_cache=c
            )
            for c in (True, False)
        ]
        results.append([loss, stats["loss_best_of_n"], *grads, *rollouts])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_the_seeds_976_token_layout_trains_and_samples():
    """5 s at 24 fps: a 24-token key frame and 119 frames of 8 tokens of 16 channels = 976 tokens."""
    torch.manual_seed(0)
    world = DeltaWorld(token_dim=16, tokens_per_frame=8, key_tokens=24, dim=32, depth=1, num_heads=2, rope_dim=8)
    tokens, times = torch.randn(1, 976, 16), torch.arange(120.0)[None] / 24
    loss, _ = world.teacher_forced_loss(tokens, times, num_hypotheses=2, loss_fn=SMOOTH_L1)
    loss.backward()
    assert torch.isfinite(loss) and world.predictor.head.weight.grad.abs().sum() > 0
    with torch.no_grad():
        future = world.rollout(tokens[:, : 24 + 9 * 8], times[:, :10], times[:, 10:13], samples=2)
    assert future.shape == (1, 2, 3, 8, 16)
    with pytest.raises(ValueError, match="976"):
        world.teacher_forced_loss(tokens[:, :-1], times, num_hypotheses=2, loss_fn=SMOOTH_L1)


def test_pixel_tokens_with_a_larger_key_frame_train_and_decode():
    """A pixel DeltaToken with a key frame of more tokens: its clip tokens feed DeltaWorld as they
    come out of the encoder, and the predicted frames decode after the context."""
    torch.manual_seed(0)
    tok = PixelDeltaToken(patch_size=4, dim=32, num_heads=2, depth=1, num_tokens=2, token_dim=8, key_tokens=6).eval()
    clip = ActionSource(num_frames=5, height=16, width=16).sample_clip(np.random.default_rng(0))
    frames, times = to_unit(clip["frames"])[None], clip["timestamps"][None]
    with torch.no_grad():
        tokens, recon = tok.encode_video(frames)  # (1, 6 + 4 x 2, 8)
    world = DeltaWorld(
        token_dim=8,
        tokens_per_frame=tok.num_tokens,
        key_tokens=tok.key_tokens,
        dim=32,
        depth=1,
        num_heads=2,
        rope_dim=8,
    )
    loss, _ = world.teacher_forced_loss(tokens, times, num_hypotheses=2, loss_fn=SMOOTH_L1)
    loss.backward()
    with torch.no_grad():
        pred = world.rollout(tokens[:, : 6 + 2 * 2], times[:, :3], times[:, 3:], samples=2)  # (1, 2, 2, K, C)
        video = tok.decode_video(pred.flatten(0, 1), (16, 16), start=3, prev=recon[:, 2].repeat(2, 1, 1, 1))
    assert torch.isfinite(loss) and video.shape == (2, 2, 3, 16, 16)


# ---- the feature-space action world model -----------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_export(tiny_backbone, tmp_path_factory) -> str:
    backbone = {
        "name": "vit_small_patch14_dinov2",
        "img_size": FRAME,
        "arch": {"depth": 2, "embed_dim": 64, "num_heads": 4},
    }
    tokenizer = {"depth": 1, "layer_scale_init": 1.0}
    deltatok = make_deltatok(tiny_backbone, **tokenizer).eval()
    meta = TokenizerModule.export_metadata({"backbone": backbone, "tokenizer": tokenizer, "frame_size": FRAME})
    return str(export_safetensors(deltatok, tmp_path_factory.mktemp("tok") / "tokenizer.safetensors", meta))


WORLD_ARGS = {"dim": 32, "depth": 1, "num_heads": 2, "rope_dim": 8, "layer_scale_init": 1.0}


def action_module(tokenizer_ckpt: str, **kw) -> WorldModule:
    torch.manual_seed(0)
    args = dict(num_hypotheses=4, eval_samples=2, eval_context=2, eval_horizons=(1, 2), action_dim=2) | kw
    return WorldModule(tokenizer_ckpt=tokenizer_ckpt, world=partial(DeltaWorld, **WORLD_ARGS), **OPTIMIZATION, **args)


def action_batch(b: int = 2, t: int = 5) -> dict:
    source = ActionSource(num_frames=t, height=FRAME, width=FRAME)
    clips = [source.sample_clip(np.random.default_rng([7, i])) for i in range(b)]
    return {k: torch.stack([c[k] for c in clips]) for k in clips[0]}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # validation_step run without a trainer
def test_given_actions_change_the_feature_futures_and_shuffled_ones_give_others(tokenizer_export):
    module = action_module(tokenizer_export)
    assert module.world.token_dim == module.deltatok.token_dim + 2
    batch = action_batch()
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and module.world.predictor.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="'actions'"):
        module.training_step({k: v for k, v in batch.items() if k != "actions"}, 0)

    feats = module.backbone(batch["frames"])
    grid, black = module.backbone.grid(FRAME, FRAME), module.backbone.black_features(FRAME, FRAME)
    times, actions = batch["timestamps"], batch["actions"]
    noise = module.world.draw_noise((2, 3, 2), generator=torch.Generator().manual_seed(0))

    def futures(context_actions: torch.Tensor, future_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return action_futures(
            module.world,
            module.space,
            feats[:, :3],
            times[:, :3],
            times[:, 3:],
            context_actions=context_actions,
            future_actions=future_actions,
            grid=grid,
            black=black,
            samples=3,
            noise=noise,
        )

    tokens, pred = futures(actions[:, :3], actions[:, 3:])
    assert tokens.shape == (2, 3, 2, 1, module.deltatok.token_dim) and pred.shape == (2, 3, 2, *feats.shape[2:])
    assert all(torch.equal(a, b) for a, b in zip(futures(actions[:, :3], actions[:, 3:]), (tokens, pred), strict=True))
    # other future actions: the first future frame (driven by the last context frame's action) stays
    _, other_future = futures(actions[:, :3], -actions[:, 3:])
    assert torch.equal(other_future[:, :, 0], pred[:, :, 0]) and not torch.allclose(
        other_future[:, :, 1], pred[:, :, 1]
    )
    # another clip's actions: every future frame changes
    _, shuffled = futures(actions[:, :3].roll(1, 0), actions[:, 3:].roll(1, 0))
    assert not torch.isclose(shuffled, pred).flatten(2).all(-1).any()
    with pytest.raises(ValueError, match="channels"):
        futures(actions[:, :3, :1], actions[:, 3:, :1])

    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    with torch.no_grad():
        module.validation_step(batch, 0)
    for h in (1, 2):
        for name in ("copy_last", "deltaworld_best", "deltaworld_mean", "deltaworld_shuffled_actions_best"):
            assert f"val/feat_loss_{name}_h{h}" in logged
    assert logged["val/feat_loss_deltaworld_best_h1"] != logged["val/feat_loss_deltaworld_shuffled_actions_best_h1"]


def test_action_world_export_round_trip_keeps_action_dim(tokenizer_export, tmp_path):
    module = action_module(tokenizer_export)
    path = export_safetensors(
        module.exported(), tmp_path / "world.safetensors", module.export_metadata({"world": WORLD_ARGS})
    )
    _, space, world, meta = load_world(path)
    assert meta["action_dim"] == 2 and world.token_dim == module.world.token_dim == module.deltatok.token_dim + 2
    for key, value in module.world.state_dict().items():
        assert torch.equal(world.state_dict()[key], value), key
    with pytest.raises(SchemaError, match="action_dim=3"):
        load_world(edited(path, tmp_path / "bad.safetensors", "action_dim", 3))
    with pytest.raises(SchemaError, match="'action_dim' must be int"):
        load_world(edited(path, tmp_path / "bad2.safetensors", "action_dim", "2"))
    # a model without actions records 0
    plain = action_module(tokenizer_export, action_dim=0)
    assert plain.export_metadata({"world": WORLD_ARGS})["action_dim"] == 0
    assert plain.world.token_dim == plain.deltatok.token_dim


def test_token_cache_carries_the_clips_actions(tmp_path):
    clips = FixedClips(ActionSource(num_frames=3, height=16, width=16), num_clips=3, seed=0)
    expected = torch.stack([clips[i]["actions"] for i in range(3)])

    def encode(frames: torch.Tensor) -> torch.Tensor:
        return frames.float().mean((2, 3, 4))[..., None, None]  # (B, T, 1, 1)

    file = read_token_cache(build_token_cache(tmp_path / "c.safetensors", clips, encode, {}, batch_size=2), {})
    assert torch.equal(file["actions"], expected) and file["tokens"].shape == (3, 3, 1, 1)
    stream = CachedClipStream(file, batch_size=1, seed=0, start_batch=0, rank=0, world_size=1)
    assert set(next(iter(stream))) == {"tokens", "timestamps", "actions"}
    urls = read_token_cache(build_token_cache(tmp_path / "shards", clips, encode, {}, batch_size=2), {})
    shards = list(ShardStream(urls, decode_cached, infinite=False))
    assert torch.equal(torch.stack([clip["actions"] for clip in shards]), expected)


def test_action_preset_trains_from_a_token_cache_and_exports(tokenizer_export, tmp_path):
    overrides = [
        "experiment=world_actions_cpu",
        f"tokenizer_ckpt={tokenizer_export}",
        f"frame_size={FRAME}",
        "data.batch_size=2",
        "data.val_clips=2",
        "data.source.num_frames=5",
        "module.num_hypotheses=2",
        "module.eval_samples=2",
        "module.eval_context=2",
        "module.eval_horizons=[1,2]",
        *(f"world.{k}={v}" for k, v in WORLD_ARGS.items()),
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "~callbacks.progress_bar",
        "trainer.enable_model_summary=false",
        "data.token_cache.clips=2",  # the preset's cache, in the run folder
    ]
    export = run_training(compose_train(overrides, tmp_path / "run"))
    cached = load_file(str(tmp_path / "run" / "tokens.safetensors"))
    assert cached["actions"].shape == (2, 5, 2) and read_metadata(export)["action_dim"] == 2
    assert load_world(export)[2].token_dim == cached["tokens"].shape[-1] + 2
    header = next((tmp_path / "run" / "csv").glob("*/metrics.csv")).read_text().splitlines()[0]
    assert "val/feat_loss_deltaworld_shuffled_actions_best_h1" in header
