"""DeltaWorld: predictor, best-of-N training, rollouts, on tiny random models."""

import pytest
import torch

from deltaworld.tokenizer.blocks import LayerScale
from deltaworld.tokenizer.losses import feature_loss
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.predictor import Predictor, causal_mask

SMOOTH_L1 = feature_loss("smooth_l1", beta=0.1)


def strengthen(module: torch.nn.Module) -> torch.nn.Module:
    """O(1) weights and branches (as the reference vectors), so every input visibly matters."""
    for m in module.modules():
        if isinstance(m, LayerScale):
            m.lambda1.data.fill_(0.5)
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features**-0.5)
    return module


def tiny_predictor() -> Predictor:
    torch.manual_seed(0)
    return strengthen(Predictor(dim=32, context_dim=24, depth=2, num_heads=2, rope_dim=12)).eval()


def tiny_world(tokens_per_frame: int = 2, **kw) -> DeltaWorld:
    torch.manual_seed(0)
    world = DeltaWorld(token_dim=24, tokens_per_frame=tokens_per_frame, dim=32, depth=2, num_heads=2, rope_dim=12, **kw)
    return strengthen(world).eval()


def irregular_times(b: int, t: int) -> torch.Tensor:
    return torch.cumsum(torch.rand(b, t) * 0.3 + 0.04, 1) - 0.04


@torch.no_grad()
def test_causal_mask_blocks_future_tokens():
    p = tiny_predictor()
    ctx, times, q = torch.randn(2, 5, 24), irregular_times(2, 6), torch.randn(2, 5, 32)
    mask = causal_mask(torch.arange(5) + 1, torch.arange(5))
    out = p(q, times[:, 1:], context=ctx, pos_k=times[:, :5], mask=mask)
    changed = ctx.clone()
    changed[:, 3:] += 5.0  # tokens of frames 3, 4
    out2 = p(q, times[:, 1:], context=changed, pos_k=times[:, :5], mask=mask)
    torch.testing.assert_close(out[:, :3], out2[:, :3])  # predictions of frames 1..3
    assert not torch.allclose(out[:, 3:], out2[:, 3:])


@torch.no_grad()
def test_kv_cache_equals_uncached():
    p = tiny_predictor()
    ctx, times, q = torch.randn(2, 6, 24), irregular_times(2, 7), torch.randn(2, 1, 32)
    cache = p.context_cache(ctx[:, :4], times[:, :4])
    cache = p.extend_cache(cache, ctx[:, 4:5], times[:, 4:5])
    cache = p.extend_cache(cache, ctx[:, 5:6], times[:, 5:6])
    cached = p(q, times[:, 6:7], cache=cache)
    full = p(q, times[:, 6:7], context=ctx, pos_k=times[:, :6])
    torch.testing.assert_close(cached, full, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_timestamps_matter_but_only_relatively():
    p = tiny_predictor()
    ctx, times, q = torch.randn(2, 4, 24), irregular_times(2, 5), torch.randn(2, 1, 32)
    out = p(q, times[:, 4:], context=ctx, pos_k=times[:, :4])
    later_target = p(q, times[:, 4:] + 0.2, context=ctx, pos_k=times[:, :4])
    assert (out - later_target).abs().max() > 1e-3
    shifted = p(q, times[:, 4:] + 3.0, context=ctx, pos_k=times[:, :4] + 3.0)
    torch.testing.assert_close(shifted, out, atol=2e-4, rtol=0)  # fp32 angle rounding only


@torch.no_grad()
def test_world_causality_with_several_tokens_per_frame():
    world = tiny_world(tokens_per_frame=3)
    tokens, times = torch.randn(2, 5, 3, 24), irregular_times(2, 5)
    noise = world.draw_noise((2, 4, 2), generator=torch.Generator().manual_seed(0))
    kw = dict(causal=True)
    out = world.predict(world.queries(noise), times[:, 1:], context=tokens[:, :-1], context_times=times[:, :-1], **kw)
    changed = tokens.clone()
    changed[:, 2, 1] += 5.0  # one token of frame 2
    out2 = world.predict(world.queries(noise), times[:, 1:], context=changed[:, :-1], context_times=times[:, :-1], **kw)
    assert out.shape == (2, 4, 2, 3, 24)
    torch.testing.assert_close(out[:, :2], out2[:, :2])  # predictions of frames 1 and 2
    assert not torch.allclose(out[:, 2:], out2[:, 2:])


@torch.no_grad()
def test_best_of_n_scores_match_a_brute_force_loop():
    world = tiny_world(tokens_per_frame=2)
    b, t, s = 2, 4, 6
    tokens, times = torch.randn(b, t + 1, 2, 24), irregular_times(b, t + 1)
    noise = world.draw_noise((b, t, s), generator=torch.Generator().manual_seed(1)) * 20
    losses = world.hypothesis_losses(noise, tokens[:, :-1], times[:, :-1], tokens[:, 1:], times[:, 1:], SMOOTH_L1)
    brute = torch.empty(b, t, s)
    for hyp in range(s):
        for frame in range(t):  # one hypothesis, one frame, only its own past, no mask
            pred = world.predict(
                world.queries(noise[:, frame, hyp])[:, None, None],
                times[:, frame + 1, None],
                context=tokens[:, : frame + 1],
                context_times=times[:, : frame + 1],
            )
            brute[:, frame, hyp] = SMOOTH_L1(pred[:, 0, 0], tokens[:, frame + 1]).mean((-2, -1))
    torch.testing.assert_close(losses, brute, atol=1e-5, rtol=1e-4)
    assert torch.equal(losses.argmin(-1), brute.argmin(-1))


def test_gradient_flows_only_through_the_selected_hypothesis():
    world = tiny_world(tokens_per_frame=2).train()
    tokens, times = torch.randn(2, 5, 2, 24), irregular_times(2, 5)
    loss, stats = world.teacher_forced_loss(
        tokens, times, num_hypotheses=8, loss_fn=SMOOTH_L1, generator=torch.Generator().manual_seed(3)
    )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in world.named_parameters()}
    assert stats["loss_best_of_n"] <= stats["loss_mean_hypothesis"]
    world.zero_grad()
    # by hand: the same draws, the arg-min picked without gradient, only it re-run with gradient
    noise = world.draw_noise((2, 4, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        losses = world.hypothesis_losses(noise, tokens[:, :-1], times[:, :-1], tokens[:, 1:], times[:, 1:], SMOOTH_L1)
    best = noise[torch.arange(2)[:, None], torch.arange(4)[None], losses.argmin(-1)]  # (B, T-1, dim)
    pred = world.predict(
        world.queries(best[:, :, None]), times[:, 1:], context=tokens[:, :-1], context_times=times[:, :-1], causal=True
    )
    SMOOTH_L1(pred[:, :, 0], tokens[:, 1:]).mean().backward()
    for name, param in world.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], msg=name)
    assert grads["slot_embed.weight"].abs().sum() > 0
    # a worse hypothesis would have given another gradient: selection matters
    worst = noise[torch.arange(2)[:, None], torch.arange(4)[None], losses.argmax(-1)]
    world.zero_grad()
    pred = world.predict(
        world.queries(worst[:, :, None]), times[:, 1:], context=tokens[:, :-1], context_times=times[:, :-1], causal=True
    )
    SMOOTH_L1(pred[:, :, 0], tokens[:, 1:]).mean().backward()
    assert not torch.allclose(world.predictor.head.weight.grad, grads["predictor.head.weight"])


def test_deterministic_world_uses_one_learned_query():
    world = tiny_world(tokens_per_frame=1, deterministic=True).train()
    tokens, times = torch.randn(2, 4, 1, 24), irregular_times(2, 4)
    with pytest.raises(ValueError, match="num_hypotheses"):
        world.teacher_forced_loss(tokens, times, num_hypotheses=4, loss_fn=SMOOTH_L1)
    loss, stats = world.teacher_forced_loss(tokens, times, num_hypotheses=1, loss_fn=SMOOTH_L1)
    loss.backward()
    assert stats == {} and world.q_embed.weight.grad.abs().sum() > 0
    with torch.no_grad():
        a = world.rollout(tokens, times, times[:, -1:] + torch.tensor([[0.1, 0.3]]), samples=3)
    assert a.shape == (2, 3, 2, 1, 24)
    torch.testing.assert_close(a[:, 0], a[:, 2])  # no noise: every sample is the same future


@torch.no_grad()
def test_kv_cached_rollout_equals_uncached():
    world = tiny_world(tokens_per_frame=2)
    context, times = torch.randn(2, 4, 2, 24), irregular_times(2, 7)
    noise = world.draw_noise((2, 5, 3), generator=torch.Generator().manual_seed(0)) * 20
    cached = world.rollout(context, times[:, :4], times[:, 4:], samples=5, noise=noise)
    full = world.rollout(context, times[:, :4], times[:, 4:], samples=5, noise=noise, use_cache=False)
    assert cached.shape == (2, 5, 3, 2, 24)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_rollout_depends_on_timestamps_and_accepts_any_spacing():
    world = tiny_world(tokens_per_frame=1)
    context, times = torch.randn(2, 4, 1, 24), irregular_times(2, 4)
    noise = world.draw_noise((2, 2, 3), generator=torch.Generator().manual_seed(0)) * 20
    future = times[:, -1:] + torch.tensor([[0.05, 0.4, 0.45]])  # irregular gaps
    out = world.rollout(context, times, future, samples=2, noise=noise)
    later = world.rollout(context, times, future + 0.3, samples=2, noise=noise)
    assert torch.isfinite(out).all() and (out - later).abs().max() > 1e-3


@torch.no_grad()
def test_sampling_is_reproducible_by_seed():
    world = tiny_world(tokens_per_frame=2)
    context, times = torch.randn(2, 4, 2, 24), irregular_times(2, 6)

    def draw(seed: int) -> torch.Tensor:
        return world.rollout(
            context, times[:, :4], times[:, 4:], samples=4, generator=torch.Generator().manual_seed(seed)
        )

    torch.testing.assert_close(draw(7), draw(7), atol=0, rtol=0)
    assert not torch.allclose(draw(7), draw(8))


def linear_motion(b: int, t: int, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens moving at a constant velocity per clip, at irregular times: copy-last is never right."""
    g = torch.Generator().manual_seed(seed)
    times = torch.cumsum(torch.rand(b, t, generator=g) * 0.2 + 0.1, 1)
    start, velocity = torch.randn(b, 1, dim, generator=g), torch.randn(b, 1, dim, generator=g)
    return (start + velocity * times[..., None])[:, :, None], times


def test_tiny_world_model_overfits_and_beats_copy_last():
    torch.manual_seed(0)
    world = DeltaWorld(token_dim=8, dim=32, depth=2, num_heads=2, rope_dim=12, layer_scale_init=0.1)
    opt = torch.optim.AdamW(world.parameters(), lr=3e-3)
    tokens, times = linear_motion(8, 6)
    for step in range(300):
        loss, _ = world.teacher_forced_loss(
            tokens, times, num_hypotheses=4, loss_fn=SMOOTH_L1, generator=torch.Generator().manual_seed(step)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = world.rollout(
            tokens[:, :5], times[:, :5], times[:, 5:], samples=4, generator=torch.Generator().manual_seed(0)
        )
    model_error = (pred[:, :, 0, 0] - tokens[:, None, 5, 0]).pow(2).mean()
    copy_error = (tokens[:, 4] - tokens[:, 5]).pow(2).mean()
    assert model_error < 0.25 * copy_error, (model_error, copy_error)


def test_diversity_statistics_on_hand_made_hypotheses():
    from deltaworld.eval.diversity import diversity_stats

    truth = torch.zeros(1, 2, 3, 4)  # (B, H, N, D)
    hyps = torch.stack([torch.zeros(2, 3, 4), torch.ones(2, 3, 4), 3 * torch.ones(2, 3, 4)])[None]  # (1, M=3, H, N, D)
    stats = diversity_stats(hyps, truth, tokens=hyps[..., :1, :])
    # pairs (0,1), (0,2), (1,2): squared distances 1, 9, 4 -> mean 14/3
    assert stats["pairwise_distance"] == pytest.approx([14 / 3] * 2)
    assert stats["token_pairwise_distance"] == pytest.approx([14 / 3] * 2)
    assert stats["best_to_truth"] == pytest.approx([0.0, 0.0])
    assert stats["mean_to_truth"] == pytest.approx([(4 / 3) ** 2] * 2)
