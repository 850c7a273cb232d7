"""Why best-of-N: on a toy bimodal token dataset, where the token after the context is +a or -a
with probability 1/2 whatever the context, a best-of-N world model learns both futures, while a
deterministic one (trained on the same clips with the same loss) can only predict their mean."""

import torch

from deltaworld.tokenizer.losses import feature_loss
from deltaworld.worldmodel.deltaworld import DeltaWorld

MODE = torch.tensor([1.0, -1.0, 0.5, 1.5])  # a: the two futures are +a and -a
TOLERANCE = 0.25  # root mean squared distance to a mode that counts as landing on it (|a| is about 1.06)
MSE = feature_loss("mse")  # its deterministic optimum is the mean of the two modes, 0


def bimodal_clips(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-frame clips (B, 2, 1, 4): a random context token, then +a or -a by a fair coin; times (B, 2)."""
    context = torch.randn(batch, 1, 1, 4, generator=generator)
    sign = torch.randint(0, 2, (batch, 1, 1, 1), generator=generator) * 2.0 - 1
    return torch.cat([context, sign * MODE], 1), torch.tensor([0.0, 0.1]).expand(batch, 2)


def trained(*, deterministic: bool, num_hypotheses: int, steps: int = 200) -> DeltaWorld:
    torch.manual_seed(0)
    world = DeltaWorld(
        token_dim=4, dim=32, depth=2, num_heads=2, rope_dim=12, layer_scale_init=0.1, deterministic=deterministic
    )
    opt = torch.optim.AdamW(world.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(1)  # both models see the same clips
    for step in range(steps):
        tokens, times = bimodal_clips(32, data)
        loss, _ = world.teacher_forced_loss(
            tokens, times, num_hypotheses=num_hypotheses, loss_fn=MSE, generator=torch.Generator().manual_seed(step)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return world.eval()


def test_best_of_n_beats_the_deterministic_model_and_its_hypotheses_cover_both_modes():
    best_of_n, deterministic = (
        trained(deterministic=False, num_hypotheses=8),
        trained(deterministic=True, num_hypotheses=1),
    )
    tokens, times = bimodal_clips(200, torch.Generator().manual_seed(123))
    target = tokens[:, -1, 0]  # (B, C)
    results = {}
    for name, world in (("best_of_n", best_of_n), ("deterministic", deterministic)):
        hyps = world.rollout(
            tokens[:, :1], times[:, :1], times[:, 1:], samples=16, generator=torch.Generator().manual_seed(0)
        )[:, :, 0, 0]  # (B, M, C)
        distance = {s: (hyps - s * MODE).pow(2).mean(-1).sqrt() for s in (1, -1)}  # (B, M) to +a and to -a
        results[name] = {
            "best_of_m": (hyps - target[:, None]).pow(2).mean(-1).min(1).values.mean().item(),
            "covered": ((distance[1] < TOLERANCE).any(1) & (distance[-1] < TOLERANCE).any(1)).float().mean().item(),
            "on_a_mode": ((distance[1] < TOLERANCE) | (distance[-1] < TOLERANCE)).float().mean().item(),
            "norm": hyps.norm(dim=-1).mean().item(),
        }
    best, det = results["best_of_n"], results["deterministic"]
    # the deterministic model collapses near the mean of the modes: its error is about |a|^2 / C
    assert det["norm"] < 0.25 * MODE.norm() and det["best_of_m"] > 0.8 * MODE.pow(2).mean(), results
    assert det["covered"] == 0, results  # the coverage check fails a model that predicts one future
    assert best["best_of_m"] < 0.1 * det["best_of_m"], results
    assert best["covered"] >= 0.9 and best["on_a_mode"] >= 0.6, results  # both futures, for most contexts
