"""Sampling futures: forecasting cases cut from a clip, M-hypothesis rollouts and the token
baselines decoded to features, best/mean selection. Shared by validation, evaluation and `deltaworld sample`."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

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


# context tokens (B, Tc, K, C) at context_times (B, Tc), future_times (B, H) -> future tokens (B, M, H, K, C)
TokenPredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def repeat_token(context: torch.Tensor, context_times: torch.Tensor, future_times: torch.Tensor) -> torch.Tensor:
    """The last context token at every future step, (B, 1, H, K, C): for delta tokens, the last
    change between frames goes on unchanged."""
    return repeat(context[:, -1], "b k c -> b 1 h k c", h=future_times.shape[1])


def extrapolate_token(context: torch.Tensor, context_times: torch.Tensor, future_times: torch.Tensor) -> torch.Tensor:
    """Linear extrapolation of the last two context tokens, z_{s+1} = 2 z_s - z_{s-1} step after
    step, which puts future step s at z_t + s (z_t - z_{t-1}): (B, 1, H, K, C). It counts steps,
    not seconds, as the recursion does. A 2-frame context has its first token coded against black."""
    if context.shape[1] < 2:
        raise ValueError(f"extrapolating tokens needs at least 2 context frames, got {context.shape[1]}")
    last, change = context[:, -1], context[:, -1] - context[:, -2]  # (B, K, C)
    steps = torch.arange(1, future_times.shape[1] + 1, device=context.device, dtype=context.dtype)
    return (last[:, None] + steps[:, None, None] * change[:, None])[:, None]


@torch.no_grad()
def token_futures(
    predict: TokenPredictor,
    space: DeltaTokens | PatchTokens,
    context_feats: torch.Tensor,
    context_times: torch.Tensor,
    future_times: torch.Tensor,
    *,
    grid: tuple[int, int],
    black: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The futures a token predictor makes of context features (B, Tc, N, D) at context_times (B, Tc),
    for future_times (B, H), as tokens and features.

    The context is tokenized on its own (its first frame against black, as in training); predicted
    tokens are decoded closed loop from the last context frame's features. One path for the world
    model and the token baselines, so they differ only in the tokens they predict.
    Returns tokens (B, M, H, K, C) and features (B, M, H, N, D).
    """
    tokens = predict(space.encode(context_feats, grid, black), context_times, future_times)
    b, m = tokens.shape[:2]
    last = repeat(context_feats[:, -1], "b n d -> (b m) n d", m=m)
    feats = space.decode(tokens.flatten(0, 1), grid, last)
    return tokens, feats.unflatten(0, (b, m))


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
    """M futures of the world model from context features (B, Tc, N, D) at context_times (B, Tc),
    for future_times (B, H) (`token_futures`). Returns tokens (B, M, H, K, C) and features (B, M, H, N, D)."""
    predict = partial(world.rollout, samples=samples, generator=generator, noise=noise)
    return token_futures(predict, space, context_feats, context_times, future_times, grid=grid, black=black)


def closest_hypothesis(hypotheses: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """hypotheses (B, M, N, D) -> the one closest to target (B, N, D) in mean squared error, (B, N, D)."""
    errors = (hypotheses.float() - target[:, None].float()).pow(2).mean((-2, -1))  # (B, M)
    return hypotheses[torch.arange(hypotheses.shape[0]), errors.argmin(1)]


@dataclass(frozen=True)
class Hypotheses:
    """The M sampled futures of a batch at the target frame."""

    tokens: torch.Tensor  # (B, M, K, C)
    feats: torch.Tensor  # (B, M, N, D)


class Predictions(dict[str, torch.Tensor]):
    """A method's named predictions at the target frame, each (B, N, D), as any method's dict; a
    sampling method also hands out, by its name, the hypotheses they were chosen from, so that the
    benchmark can say how much they differ without sampling again."""

    def __init__(self, predictions: dict[str, torch.Tensor], hypotheses: dict[str, Hypotheses]) -> None:
        super().__init__(predictions)
        self.hypotheses = hypotheses


def token_forecaster(predict: TokenPredictor, space: DeltaTokens | PatchTokens, *, name: str) -> Method:
    """Decode `predict`'s futures over the case's future times (`token_futures`). One future is
    reported as `name`; of M > 1, the hypothesis closest to the truth at the target (`<name>_best`,
    as the reference) and the features averaged over hypotheses (`<name>_mean`), with the
    hypotheses at the target under `name` (`Predictions`)."""

    def method(case: ForecastCase) -> dict[str, torch.Tensor]:
        tokens, feats = token_futures(
            predict, space, case.context_feats, case.context_times, case.future_times, grid=case.grid, black=case.black
        )
        last = feats[:, :, -1]  # (B, M, N, D) at the target frame
        if last.shape[1] == 1:
            return {name: last[:, 0]}
        predictions = {f"{name}_best": closest_hypothesis(last, case.target_feats), f"{name}_mean": last.mean(1)}
        return Predictions(predictions, {name: Hypotheses(tokens=tokens[:, :, -1], feats=last)})

    return method


def world_forecaster(
    world: DeltaWorld,
    space: DeltaTokens | PatchTokens,
    *,
    samples: int,
    name: str = "deltaworld",
    generator: torch.Generator | None = None,
) -> Method:
    """Roll the world model out, M = `samples` hypotheses (`token_forecaster`)."""
    return token_forecaster(partial(world.rollout, samples=samples, generator=generator), space, name=name)
