"""Action conditioning: the action-driven synthetic source, channel concatenation, conditioned
rollouts that change with the actions, and a tiny model that learns to use them."""

import numpy as np
import torch

from deltaworld.data.actions import ActionSource
from deltaworld.tokenizer.pixel import PixelDeltaToken, to_unit
from deltaworld.worldmodel.actions import (
    action_feedback,
    channel_weighted,
    sample_action_futures,
    with_actions,
)
from deltaworld.worldmodel.deltaworld import DeltaWorld


def tiny_world(token_dim: int, k: int = 2) -> DeltaWorld:
    torch.manual_seed(0)
    return DeltaWorld(
        token_dim=token_dim, tokens_per_frame=k, dim=32, depth=2, num_heads=2, rope_dim=8, layer_scale_init=1.0
    )


def test_action_source_is_seeded_and_actions_move_the_agent():
    source = ActionSource(num_frames=5, height=32, width=32, num_distractors=0, max_step=0.1)
    a, b = source.sample_clip(np.random.default_rng(3)), source.sample_clip(np.random.default_rng(3))
    assert a["frames"].shape == (5, 3, 32, 32) and a["actions"].shape == (5, 2)
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["actions"], b["actions"])
    torch.testing.assert_close(a["timestamps"], torch.arange(5) / 10.0)

    # the agent's dark core: its centre moves by action * max_step * size (unless clamped at a border)
    def core_centre(frame):
        ys, xs = np.nonzero((frame.numpy() == 20).all(0))
        return np.array([xs.mean(), ys.mean()])

    moved = core_centre(a["frames"][1]) - core_centre(a["frames"][0])
    np.testing.assert_allclose(moved, a["actions"][0].numpy() * 3.2, atol=1.0)


def test_actions_concatenate_on_channels_and_condition_the_rollout():
    tokens, actions = torch.randn(2, 4, 2, 8), torch.rand(2, 4, 3) * 2 - 1
    joint = with_actions(tokens, actions)
    assert joint.shape == (2, 4, 2, 11) and torch.equal(joint[:, :, 1, 8:], actions)
    world = tiny_world(11)
    times, future = torch.arange(4.0).expand(2, -1) * 0.1, 0.4 + torch.arange(3.0).expand(2, -1) * 0.1
    noise = world.draw_noise((2, 2, 3), generator=torch.Generator().manual_seed(0))
    given = torch.rand(2, 3, 3) * 2 - 1

    def roll(context, future_actions):
        return world.rollout(
            context, times, future, samples=2, noise=noise, feedback=action_feedback(future_actions, 2)
        )

    base = roll(joint, given)
    assert torch.equal(base[..., 8:], given[:, None, :, None].expand(-1, 2, -1, 2, -1))  # actions written in
    other_future = roll(joint, -given)
    assert torch.equal(base[:, :, 0, :, :8], other_future[:, :, 0, :, :8])  # step 0 sees only the context
    assert not torch.allclose(base[:, :, 1:, :, :8], other_future[:, :, 1:, :, :8])
    other_past = roll(with_actions(tokens, -actions), given)
    assert not torch.allclose(base[:, :, 0, :, :8], other_past[:, :, 0, :, :8])
    # without feedback the rollout is the plain one
    torch.testing.assert_close(
        world.rollout(joint, times, future, samples=2, noise=noise)[:, :, 0, :, :8], base[:, :, 0, :, :8]
    )


def test_pixel_futures_change_with_actions():
    torch.manual_seed(0)
    tok = PixelDeltaToken(
        patch_size=4, dim=32, num_heads=2, depth=1, num_tokens=2, token_dim=8, layer_scale_init=1.0
    ).eval()
    torch.nn.init.normal_(tok.head[1].weight, std=0.05)
    world = tiny_world(10)
    clip = ActionSource(num_frames=5, height=16, width=16).sample_clip(np.random.default_rng(0))
    frames, times, actions = to_unit(clip["frames"])[None], clip["timestamps"][None], clip["actions"][None]

    def futures(future_actions):
        return sample_action_futures(
            world,
            tok,
            frames[:, :3],
            times[:, :3],
            actions[:, :3],
            times[:, 3:],
            future_actions=future_actions,
            samples=2,
            generator=torch.Generator().manual_seed(0),
        )

    a, b = futures(actions[:, 3:]), futures(-actions[:, 3:])
    assert a.shape == (1, 2, 2, 3, 16, 16)
    assert torch.equal(a[:, :, 0], b[:, :, 0]) and not torch.allclose(a[:, :, 1], b[:, :, 1])


def test_world_learns_to_use_actions():
    """Next token = previous token + W a: only the actions make the future predictable."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, 4, generator=gen)

    def batch(n=32, t=4):
        actions = torch.rand(n, t, 2, generator=gen) * 2 - 1
        start = torch.randn(n, 1, 4, generator=gen) * 0.1
        tokens = torch.cat((start, start + torch.cumsum(actions[:, :-1] @ w, 1)), 1)[:, :, None]  # (n, t, 1, 4)
        return tokens, actions

    world = tiny_world(6, k=1)
    loss_fn = channel_weighted(lambda p, t: (p - t) ** 2, 4, 0.0)  # action channels unsupervised
    opt = torch.optim.AdamW(world.parameters(), lr=3e-3)
    times = torch.arange(4.0).expand(32, -1) * 0.1
    for _ in range(50):
        tokens, actions = batch()
        loss, _ = world.teacher_forced_loss(with_actions(tokens, actions), times, num_hypotheses=1, loss_fn=loss_fn)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tokens, actions = batch()
    with torch.no_grad():

        def error(context_actions):
            pred = world.rollout(with_actions(tokens[:, :3], context_actions), times[:, :3], times[:, 3:], samples=1)
            return (pred[:, 0, 0, :, :4] - tokens[:, 3]).pow(2).mean()

        true, shuffled = error(actions[:, :3]), error(actions[:, :3].roll(1, 0))
    assert true < 0.5 * shuffled, (true, shuffled)
