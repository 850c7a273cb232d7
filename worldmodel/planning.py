"""Planning with a world model: sampling-based trajectory optimisation (CEM, MPPI) over action
sequences, and model-predictive control (re-plan every step, execute the first action).

The model side is a small protocol, `PlanningModel`: `predict(actions (S, H, A)) -> states` for S
candidate sequences at once, `cost(states, goal) -> (S,)`. A world model, the true simulator and a
toy with exact dynamics all fit it, so the same planner runs on each (the simulator's success is the
upper bound a world model's is measured against).

The cost of a pixel world model compares *decoded frames* with the goal frame, never raw tokens:
a delta token encodes the change from the previous frame, so two tokens can be equal while the
frames they lead to differ (the same move from two places), and a goal has no delta at all.
`frame_cost` is the mean over the predicted steps of a blurred pixel distance: per step rather than
final only, since MPC executes just the first action and a cost that only sees step H cannot tell
a plan that heads for the goal now from one that wanders and arrives late (with the true simulator
on the reach task, final-only reached 85% of the episodes, per step 95%); blurred, since an agent
that does not yet overlap its goal is equally far in sharp pixels wherever it is, whereas a blur of
a fifth of the frame gives the cost a slope across it. The goal may be one frame per predicted step
(a goal clip): where parts of the scene move on their own, a single goal frame also asks for where
they were when it was taken, and covering a moved distractor would lower a pixel cost.
"""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from deltaworld.tokenizer.pixel import PixelDeltaToken, to_unit
from deltaworld.worldmodel.actions import rollout_frames, split_actions
from deltaworld.worldmodel.deltaworld import DeltaWorld


class PlanningModel(Protocol):
    def predict(self, actions: torch.Tensor) -> torch.Tensor:
        """Candidate action sequences (S, H, A) -> predicted states (S, H, ...)."""

    def cost(self, states: torch.Tensor, goal: Any) -> torch.Tensor:
        """Predicted states (S, H, ...) -> cost (S,) of each candidate; lower is closer to `goal`."""


@dataclass(frozen=True)
class Plan:
    actions: torch.Tensor  # (H, A) the sequence to execute
    history: list[float]  # per iteration: mean cost of the elites (CEM) / weighted mean cost (MPPI)


@dataclass(kw_only=True)
class SamplingPlanner:
    """What CEM and MPPI share: Gaussian candidates around a mean sequence, clipped to the action
    bounds, scored in one `predict` call per iteration (the world model's rollout then runs one
    batched forward per step over all candidates). Candidate 0 is always the mean itself, so the
    sequence being refined is scored too. `smoothness` weights the mean squared change between
    consecutive actions, added to the model's cost."""

    horizon: int
    action_dim: int
    samples: int = 64  # S candidates per iteration
    iterations: int = 4
    std: float = 0.5  # of the candidates around the mean, in units of half the action range
    low: float = -1.0
    high: float = 1.0
    smoothness: float = 0.0
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        positive = {"horizon": self.horizon, "action_dim": self.action_dim, "samples": self.samples}
        for key, value in {**positive, "iterations": self.iterations}.items():
            if value < 1:
                raise ValueError(f"planner {key}={value}: must be at least 1")
        if not self.low < self.high or self.std <= 0 or self.smoothness < 0:
            raise ValueError(
                f"planner needs low < high, std > 0 and smoothness >= 0; got {self.low}, {self.high}, "
                f"{self.std}, {self.smoothness}"
            )
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def centre(self) -> float:
        return (self.low + self.high) / 2

    def start(self, init: torch.Tensor | None) -> torch.Tensor:
        """The first mean (H, A): a warm start (the previous plan shifted) or the range's centre."""
        return torch.full((self.horizon, self.action_dim), self.centre) if init is None else init.float().cpu()

    def candidates(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """(S, H, A) around mean (H, A) with per-entry std (H, A), clipped; row 0 is the mean."""
        noise = torch.randn(self.samples, *mean.shape, generator=self.generator)
        noise[0] = 0
        return (mean + std * noise).clamp(self.low, self.high)

    def score(self, model: PlanningModel, candidates: torch.Tensor, goal: Any) -> torch.Tensor:
        """The objective (S,): the model's cost + smoothness x mean squared action change."""
        cost = model.cost(model.predict(candidates), goal).float().cpu()
        if self.smoothness and self.horizon > 1:
            cost = cost + self.smoothness * candidates.diff(dim=1).pow(2).sum(-1).mean(-1)
        return cost


@dataclass(kw_only=True)
class CEM(SamplingPlanner):
    """Cross-entropy method: refit the Gaussian to the `elites` lowest-cost candidates each
    iteration; returns the lowest-cost candidate seen."""

    elites: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.elites <= self.samples:
            raise ValueError(f"planner elites={self.elites}: must be between 1 and samples={self.samples}")

    def plan(self, model: PlanningModel, goal: Any, *, init: torch.Tensor | None = None) -> Plan:
        mean = self.start(init)
        std = torch.full_like(mean, self.std * (self.high - self.low) / 2)
        best, best_cost, history = mean, math.inf, []
        for _ in range(self.iterations):
            candidates = self.candidates(mean, std)  # (S, H, A)
            cost = self.score(model, candidates, goal)
            order = cost.argsort()
            elites = candidates[order[: self.elites]]  # (E, H, A)
            if cost[order[0]] < best_cost:
                best, best_cost = candidates[order[0]], float(cost[order[0]])
            mean, std = elites.mean(0), elites.std(0, unbiased=False)
            history.append(float(cost[order[: self.elites]].mean()))
        return Plan(best, history)


@dataclass(kw_only=True)
class MPPI(SamplingPlanner):
    """Model-predictive path integral: the mean moves to the candidates' average weighted by
    exp(-(cost - min) / (temperature * (median - min))), and the spread to their weighted spread (as
    TD-MPC's MPPI does; at a fixed spread the mean keeps wandering by about std / sqrt(the samples
    that carry weight)). The costs are scaled by the gap between the median and the best candidate,
    so one temperature suits a model whose cost is pixels and a toy whose cost is squared units (the
    range would let one far-off candidate set the scale)."""

    temperature: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"planner temperature={self.temperature}: must be positive")

    def plan(self, model: PlanningModel, goal: Any, *, init: torch.Tensor | None = None) -> Plan:
        mean = self.start(init)
        std = torch.full_like(mean, self.std * (self.high - self.low) / 2)
        history = []
        for _ in range(self.iterations):
            candidates = self.candidates(mean, std)
            cost = self.score(model, candidates, goal)
            spread = (cost.median() - cost.min()).clamp_min(1e-12)
            weights = torch.softmax(-(cost - cost.min()) / (self.temperature * spread), 0)  # (S,)
            mean = torch.einsum("s,sha->ha", weights, candidates)
            std = torch.einsum("s,sha->ha", weights, (candidates - mean).pow(2)).sqrt()
            history.append(float((weights * cost).sum()))
        return Plan(mean, history)


@dataclass(kw_only=True)
class RandomActions(SamplingPlanner):
    """The baseline: a uniformly random sequence within the bounds; the model is never asked."""

    def plan(self, model: PlanningModel, goal: Any, *, init: torch.Tensor | None = None) -> Plan:
        u = torch.rand(self.horizon, self.action_dim, generator=self.generator)
        return Plan(self.low + (self.high - self.low) * u, [])


class Planner(Protocol):
    def plan(self, model: PlanningModel, goal: Any, *, init: torch.Tensor | None = None) -> Plan: ...


PLANNERS: dict[str, type[SamplingPlanner]] = {"cem": CEM, "mppi": MPPI, "random": RandomActions}


def build_planner(method: str, **options: Any) -> SamplingPlanner:
    """The planner named `method` (cem | mppi | random) with keyword options; those another method
    takes (elites for MPPI, temperature for CEM) are left out, so one option block serves all."""
    if method not in PLANNERS:
        raise ValueError(f"planner method={method!r}; choose one of {', '.join(PLANNERS)}")
    cls = PLANNERS[method]
    names = {f.name for f in cls.__dataclass_fields__.values() if f.init}
    shared = {f.name for planner in PLANNERS.values() for f in planner.__dataclass_fields__.values() if f.init}
    if unknown := sorted(set(options) - shared):
        raise ValueError(f"unknown planner options {unknown}; the planners take {sorted(shared)}")
    return cls(**{k: v for k, v in options.items() if k in names})


def shifted(actions: torch.Tensor) -> torch.Tensor:
    """A warm start for the next MPC step: the plan (H, A) less its executed first action, the last repeated."""
    return torch.cat((actions[1:], actions[-1:]))


def blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of frames (..., C, h, w) by `sigma` pixels, edges replicated; sigma 0 =
    unchanged. A wide blur keeps nothing finer than about sigma / 2 pixels, so the frames are first
    average-pooled by that factor and blurred at the low resolution (output (..., C, h / f, w / f)):
    a planner scores every candidate's every step with it."""
    if sigma <= 0:
        return frames
    factor = max(1, int(sigma // 2))
    lead, c = frames.shape[:-3], frames.shape[-3]
    flat = frames.reshape(-1, 1, *frames.shape[-2:])  # every channel of every frame alone
    if factor > 1:
        flat = F.avg_pool2d(flat, factor, ceil_mode=True)
    sigma /= factor
    radius = max(1, min(math.ceil(2.5 * sigma), min(flat.shape[-2:]) - 1))  # reflection needs radius < side
    x = torch.arange(-radius, radius + 1, dtype=frames.dtype, device=frames.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return flat.reshape(*lead, c, *flat.shape[-2:])


BLURS = (0.2,)  # on the reach task, a sharp term beside it let the texture under the agent outweigh the goal


def frame_cost(frames: torch.Tensor, goal: torch.Tensor, *, blurs: Sequence[float] = BLURS) -> torch.Tensor:
    """Predicted frames (S, H, 3, h, w) against a goal frame (3, h, w) or one goal frame per step
    (H, 3, h, w), all in [-1, 1] -> (S,): the mean over the steps and over `blurs` (Gaussian sigmas
    as fractions of the frame's short side; 0 = sharp) of the mean squared pixel difference."""
    side = min(frames.shape[-2:])
    goal = goal.to(frames.device, frames.dtype)
    per_blur = [(blur(frames, s * side) - blur(goal, s * side)).pow(2).mean((-3, -2, -1)) for s in blurs]
    return torch.stack(per_blur).mean((0, 2))


class PixelWorldModel:
    """A pixel action world model as a `PlanningModel`, conditioned on the newest observed frames:
    frames uint8 (Tc, 3, h, w) at `fps`, and the actions taken after each but the last (Tc - 1, A).
    The context is coded once; `predict` writes each candidate's first action into the last context
    frame's action channels (it drives the first predicted frame) and the rest into the predicted
    frames (`DeltaWorld.rollout(feedback=...)`), rolls all S candidates out in one batched forward
    per step and decodes their frames (S, H, 3, h, w) in [-1, 1]. Every candidate of every call is
    rolled out with the same noise draw (common random numbers), so candidates, and a planner's
    iterations, differ by their actions alone and not by which hypothesis the noise picked; `seed`
    fixes the draw."""

    def __init__(
        self,
        world: DeltaWorld,
        tokenizer: PixelDeltaToken,
        frames: torch.Tensor,
        actions: torch.Tensor,
        *,
        fps: float,
        blurs: Sequence[float] = BLURS,
        seed: int = 0,
    ) -> None:
        if actions.shape[0] != frames.shape[0] - 1:
            raise ValueError(f"{frames.shape[0]} context frames need {frames.shape[0] - 1} past actions")
        device = next(world.parameters()).device
        self.world, self.tokenizer, self.fps, self.blurs = world, tokenizer, fps, tuple(blurs)
        tokens, recon = tokenizer.encode_video(to_unit(frames.to(device))[None])
        self.tokens, self.last = tokenizer.frame_tokens(tokens), recon[:, -1]  # (1, Tc, K, C), (1, 3, h, w)
        self.past = actions.to(device, torch.float32)  # (Tc - 1, A)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.noise: torch.Tensor | None = None  # (1, 1, H, dim), drawn at the first predict

    @torch.no_grad()
    def predict(self, actions: torch.Tensor) -> torch.Tensor:
        s, h = actions.shape[:2]
        actions = actions.to(self.past.device, torch.float32)
        tc = self.tokens.shape[1]
        context_actions, future_actions = split_actions(self.past.expand(s, -1, -1), actions)  # (S, Tc, A), (S, H, A)
        times = torch.arange(tc + h, device=actions.device, dtype=torch.float32) / self.fps
        if self.noise is None or self.noise.shape[2] != h:
            self.noise = self.world.draw_noise((1, 1, h), device=actions.device, generator=self.generator)
        _, frames = rollout_frames(
            self.world,
            self.tokenizer,
            self.tokens.expand(s, -1, -1, -1),
            self.last.expand(s, -1, -1, -1),
            times[:tc].expand(s, -1),
            context_actions,
            times[tc:].expand(s, -1),
            future_actions=future_actions,
            noise=self.noise.expand(s, -1, -1, -1),
        )
        return frames[:, 0]  # (S, H, 3, h, w)

    def cost(self, states: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """goal: a frame uint8 (3, h, w), or one per predicted step (H, 3, h, w)."""
        return frame_cost(states, to_unit(goal), blurs=self.blurs)


class Environment(Protocol):
    """What MPC needs of a simulator: its history so far and one step."""

    frames: list[torch.Tensor]  # observed frames, the newest last
    actions: list[torch.Tensor]  # actions taken, one fewer than frames

    def step(self, action: torch.Tensor) -> Any: ...

    def reached(self) -> bool: ...


@dataclass(frozen=True)
class Episode:
    actions: torch.Tensor  # (T, A) executed
    seconds: list[float]  # per planning step: conditioning the model + planning
    reached: bool


def run_mpc(
    env: Environment,
    planner: Planner,
    model_at: Callable[[Environment], PlanningModel],
    goal_at: Callable[[Environment], Any],
    *,
    budget: int,
    warm_start: bool = True,
) -> Episode:
    """Model-predictive control: until the goal is reached or `budget` actions are taken, condition
    the model on the episode so far (`model_at(env)`), plan toward `goal_at(env)` (the goal as the
    model's cost takes it, which may change with time), execute the plan's first action.
    warm_start: each plan starts from the previous one shifted by a step."""
    init, seconds = None, []
    while not env.reached() and len(env.actions) < budget:
        start = time.perf_counter()
        plan = planner.plan(model_at(env), goal_at(env), init=init)
        seconds.append(time.perf_counter() - start)
        env.step(plan.actions[0])
        init = shifted(plan.actions) if warm_start else None
    executed = torch.stack(env.actions) if env.actions else torch.empty(0)  # empty: it started at the goal
    return Episode(executed, seconds, env.reached())
