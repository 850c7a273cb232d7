"""Sampling futures: forecasting cases cut from a clip, M-hypothesis rollouts decoded to features,
best/mean selection and diversity statistics. Shared by validation, evaluation and `deltaworld sample`."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from einops import repeat

from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.spaces import DeltaTokens, PatchTokens


@dataclass
class ForecastCase:
    """One horizon of one batch: `context` frames end `horizon` frames before the target frame."""

    horizon: int
    grid: tuple[int, int]
    context_feats: torch.Tensor  # (B, Tc, N, D)
    context_times: torch.Tensor  # (B, Tc) seconds
    future_times: torch.Tensor  # (B, h) seconds, the last one is the target's
    future_feats: torch.Tensor  # (B, h, N, D) true features of the frames after the context
    target_feats: torch.Tensor  # (B, N, D)
    black: torch.Tensor  # (N, D) features of a black frame: what a clip's first frame is coded against


# a method maps a case to named feature predictions at the target frame, each (B, N, D)
Method = Callable[[ForecastCase], dict[str, torch.Tensor]]


def forecast_cases(
    feats: torch.Tensor,
    timestamps: torch.Tensor,
    grid: tuple[int, int],
    black: torch.Tensor,
    *,
    context: int,
    horizons: Iterable[int],
) -> Iterable[ForecastCase]:
    """Cases for each horizon; the target is always the clip's last frame (where labels live)."""
    t = feats.shape[1]
    for horizon in horizons:
        last_ctx = t - 1 - horizon
        first_ctx = last_ctx - context + 1
        if first_ctx < 0:
            raise ValueError(f"clips of {t} frames cannot hold {context} context frames + horizon {horizon}")
        ctx, fut = slice(first_ctx, last_ctx + 1), slice(last_ctx + 1, t)
        yield ForecastCase(
            horizon=horizon,
            grid=grid,
            context_feats=feats[:, ctx],
            context_times=timestamps[:, ctx],
            future_times=timestamps[:, fut],
            future_feats=feats[:, fut],
            target_feats=feats[:, -1],
            black=black,
        )


def copy_last(case: ForecastCase) -> dict[str, torch.Tensor]:
    """The lower bound: the future looks like the last context frame."""
    return {"copy_last": case.context_feats[:, -1]}


@torch.no_grad()
def sample_futures(
    world: DeltaWorld,
    space: DeltaTokens | PatchTokens,
    context_feats: torch.Tensor,
    context_times: torch.Tensor,
    future_times: torch.Tensor,
    *,
    grid: tuple[int, int],
    black: torch.Tensor,
    samples: int,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M futures from context features (B, Tc, N, D) at context_times (B, Tc), for future_times (B, H).

    The context is tokenized on its own (its first frame against black, as in training); predicted
    tokens are decoded closed loop from the last context frame's features.
    Returns tokens (B, M, H, K, C) and features (B, M, H, N, D).
    """
    tokens = world.rollout(
        space.encode(context_feats, grid, black),
        context_times,
        future_times,
        samples=samples,
        generator=generator,
        noise=noise,
    )
    b, m = tokens.shape[:2]
    last = repeat(context_feats[:, -1], "b n d -> (b m) n d", m=m)
    feats = space.decode(tokens.flatten(0, 1), grid, last)
    return tokens, feats.unflatten(0, (b, m))


def closest_hypothesis(hypotheses: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """hypotheses (B, M, N, D) -> the one closest to target (B, N, D) in mean squared error, (B, N, D)."""
    errors = (hypotheses.float() - target[:, None].float()).pow(2).mean((-2, -1))  # (B, M)
    return hypotheses[torch.arange(hypotheses.shape[0]), errors.argmin(1)]


def world_forecaster(
    world: DeltaWorld,
    space: DeltaTokens | PatchTokens,
    *,
    samples: int,
    name: str = "deltaworld",
    generator: torch.Generator | None = None,
) -> Method:
    """Roll the world model out over the case's future times; with M > 1 samples report the
    hypothesis closest to the truth at the target (`<name>_best`, as the reference) and the
    features averaged over hypotheses (`<name>_mean`); with one sample report it as `<name>`."""

    def method(case: ForecastCase) -> dict[str, torch.Tensor]:
        _, feats = sample_futures(
            world,
            space,
            case.context_feats,
            case.context_times,
            case.future_times,
            grid=case.grid,
            black=case.black,
            samples=samples,
            generator=generator,
        )
        last = feats[:, :, -1]  # (B, M, N, D) at the target frame
        if samples == 1:
            return {name: last[:, 0]}
        return {f"{name}_best": closest_hypothesis(last, case.target_feats), f"{name}_mean": last.mean(1)}

    return method
