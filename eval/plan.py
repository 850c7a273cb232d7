"""`deltaworld plan`: goal-reaching with an action world model. Open loop, one plan from given start
frames toward a goal; closed loop, model-predictive control on the synthetic reach task
(`data.actions.ReachEnv`) over held-out episodes, beside random actions and the same planner with
the true simulator as its model (the upper bound), reported as metrics.json + report.md with
figures. With no world_ckpt the models are trained first by the `train` stages the config names,
through `train_stage` (`deltaworld.tokenizer.fit.run_training`, handed in by the entry point: eval
never trains a model itself)."""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from deltaworld.data.actions import ActionSource, ReachEnv, episode_seed, load_actions
from deltaworld.data.clips import resize_center_crop
from deltaworld.data.media import IMAGE_EXTENSIONS, load_image
from deltaworld.data.video import decode_frames, probe_video
from deltaworld.eval.configs import compose_config
from deltaworld.eval.demo import TrainStage, train_world
from deltaworld.eval.device import resolve_device
from deltaworld.eval.figures import animated_grid, image_grid, save_figure
from deltaworld.eval.plan_models import ActionWorld, load_action_world
from deltaworld.eval.records import Record, metrics_table, write_metrics
from deltaworld.eval.sample import unit_images
from deltaworld.tokenizer.checkpoint import atomic_write_text
from deltaworld.tokenizer.pixel import to_unit
from deltaworld.worldmodel.planning import Environment, PlanningModel, build_planner, frame_cost, run_mpc

log = logging.getLogger(__name__)

DATASET = "synthetic_reach"
METHODS = ("cem", "mppi", "random", "true_simulator")
LOWER_IS_BETTER = ("final_distance", "steps", "seconds_per_step")


@dataclass
class SimulatorModel:
    """The true simulator as a `PlanningModel`: the frames the episode would show under each
    candidate (`ReachEnv.imagine`), scored by the same cost as a world model's."""

    env: ReachEnv
    blurs: tuple[float, ...]

    def predict(self, actions: torch.Tensor) -> torch.Tensor:
        return to_unit(self.env.imagine(actions))  # (S, H, 3, h, w)

    def cost(self, states: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return frame_cost(states, to_unit(goal), blurs=self.blurs)


def check_plan_settings(cfg: DictConfig) -> None:
    """Refuse settings that cannot plan, before anything is trained, loaded or written."""
    whole = {"context": cfg.context, "budget": cfg.budget, "episodes": cfg.episodes}
    whole |= {"planner.horizon": cfg.planner.horizon, "planner.samples": cfg.planner.samples}
    for key, value in whole.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}={value}: must be a whole number of at least 1")
    if bool(cfg.start) != bool(cfg.goal):
        raise ValueError("the open-loop plan needs both start=<image or video> and goal=<image or video>")
    if unknown := sorted(set(cfg.methods) - set(METHODS)):
        raise ValueError(f"methods={list(cfg.methods)}: unknown {unknown}; choose from {', '.join(METHODS)}")
    if cfg.simulator_planner not in ("cem", "mppi"):
        raise ValueError(f"simulator_planner={cfg.simulator_planner}: cem or mppi")
    if not cfg.world_ckpt and not cfg.get("train"):
        raise ValueError("plan needs world_ckpt=<action world export>, or experiment=plan_cpu to train one first")


def planner_for(cfg: DictConfig, method: str, action_dim: int, **changes):
    options = {**OmegaConf.to_container(cfg.planner, resolve=True), **changes}
    options.pop("method")
    return build_planner(method, action_dim=action_dim, seed=cfg.seed, **options)


def train_models(cfg: DictConfig, train_stage: TrainStage) -> tuple[Path, dict[str, float]]:
    """The `train` stages (tokenizer, then the world model on it) in out_dir -> (world export,
    seconds per stage)."""
    out_dir = Path(cfg.out_dir)
    accelerator = "gpu" if resolve_device(cfg.device).type == "cuda" else "cpu"
    common = [f"seed={cfg.seed}", f"trainer.accelerator={accelerator}"]
    start = time.perf_counter()
    tokenizer = train_stage(
        compose_config("train", [*cfg.train.tokenizer, *common, f"run_dir={out_dir / 'tokenizer'}"])
    )
    middle = time.perf_counter()
    world = train_world(cfg, train_stage, tokenizer, "world", [*cfg.train.world, f"trainer.accelerator={accelerator}"])
    return world, {"tokenizer": middle - start, "world": time.perf_counter() - middle}


def run_plan(cfg: DictConfig, train_stage: TrainStage) -> Path:
    """`deltaworld plan` (conf/plan.yaml): the open-loop plan (start= and goal=) or the closed-loop
    benchmark; returns plan.json or report.md."""
    check_plan_settings(cfg)
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world_ckpt, train_seconds = (Path(cfg.world_ckpt), {}) if cfg.world_ckpt else train_models(cfg, train_stage)
    model = load_action_world(world_ckpt, device)
    if cfg.start:
        return open_loop(cfg, model, out_dir)
    report = closed_loop(cfg, model, out_dir, world_ckpt=world_ckpt, train_seconds=train_seconds)
    print(f"\nreport: {report}")
    return report


# ---- open loop ---------------------------------------------------------------------------------


def read_frames(path: str, *, count: int, size: int, fps: float, last: bool) -> torch.Tensor:
    """uint8 (T, 3, size, size), T <= count: an image (T = 1), or `count` frames 1/fps apart from
    the end (`last`) or the start of a video (fewer when it is shorter)."""
    if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
        frames = load_image(path)[None]
    else:
        end = probe_video(path).duration - 1 / probe_video(path).fps
        wanted = np.arange(count) / fps
        wanted = wanted[wanted <= end]
        frames, _ = decode_frames(path, end - wanted[::-1] if last else wanted)
    return resize_center_crop(frames, size, size)


def open_loop(cfg: DictConfig, model: ActionWorld, out_dir: Path) -> Path:
    """One plan from the start frames toward the goal: prints it, writes plan.json (actions, the
    predicted cost and the planner's per-iteration cost), plan.png and plan.gif."""
    size, fps, horizon = model.frame_size, cfg.env.fps, cfg.planner.horizon
    start = read_frames(cfg.start, count=cfg.context, size=size, fps=fps, last=True)  # (Tc, 3, h, w)
    goal = read_frames(cfg.goal, count=horizon, size=size, fps=fps, last=False)
    goal = torch.cat((goal, goal[-1:].expand(horizon - len(goal), -1, -1, -1)))  # (H, 3, h, w): the last held
    past = torch.zeros(len(start) - 1, model.action_dim)
    if cfg.start_actions and len(start) > 1:
        past = load_actions(cfg.start_actions, action_dim=model.action_dim, length=len(start) - 1)[: len(start) - 1]
    world = model.planning_model(start, past, fps=fps, blurs=tuple(cfg.cost.blurs), seed=cfg.seed)
    planner = planner_for(cfg, cfg.planner.method, model.action_dim)
    seconds = time.perf_counter()
    plan = planner.plan(world, goal)
    seconds = time.perf_counter() - seconds
    predicted = world.predict(plan.actions[None])  # (1, H, 3, h, w)
    cost = float(world.cost(predicted, goal)[0])
    result = {
        "actions": plan.actions.tolist(),
        "predicted_cost": cost,
        "iteration_costs": plan.history,
        "seconds": seconds,
        "method": cfg.planner.method,
    }
    atomic_write_text(out_dir / "plan.json", json.dumps(result, indent=1) + "\n")
    shown, goals = unit_images(predicted[0]), unit_images(to_unit(goal))
    titles = [f"step {h + 1}: a=({a[0]:+.2f}, {a[1]:+.2f})" for h, a in enumerate(plan.actions.tolist())]
    image_grid(
        [("start", list(unit_images(to_unit(start)))), ("predicted", list(shown)), ("goal", list(goals))],
        out_dir / "plan.png",
        col_titles=titles,
    )
    animated_grid([[p, g] for p, g in zip(shown, goals, strict=True)], out_dir / "plan.gif", columns=2)
    print(f"{cfg.planner.method} plan ({seconds:.2f} s, predicted cost {cost:.4g}):")
    for h, a in enumerate(plan.actions.tolist()):
        print(f"  step {h + 1}: " + " ".join(f"{v:+.3f}" for v in a))
    print(f"plan: {out_dir / 'plan.json'}\nfigure: {out_dir / 'plan.png'}\nanimation: {out_dir / 'plan.gif'}")
    return out_dir / "plan.json"


# ---- closed loop -------------------------------------------------------------------------------


@dataclass
class EpisodeResult:
    reached: bool
    final_distance: float
    steps: int
    seconds: list[float]
    positions: np.ndarray  # (T + 1, 2) px
    frames: list[torch.Tensor]  # uint8 (3, h, w), the start's and each step's
    goal: np.ndarray  # (2,) px
    goal_frame: torch.Tensor  # uint8 (3, h, w)


def world_model_at(cfg: DictConfig, model: ActionWorld) -> Callable[[Environment], PlanningModel]:
    """The world model conditioned on the episode's newest `context` frames and the actions between them."""

    def condition(env: Environment) -> PlanningModel:
        frames = torch.stack(env.frames[-cfg.context :])
        between = env.actions[len(env.actions) - len(frames) + 1 :]
        past = torch.stack(between) if between else torch.zeros(0, model.action_dim)
        return model.planning_model(frames, past, fps=cfg.env.fps, blurs=tuple(cfg.cost.blurs), seed=cfg.seed)

    return condition


def run_method(cfg: DictConfig, method: str, model: ActionWorld, env: ReachEnv) -> list[EpisodeResult]:
    """Every held-out episode under one method, the same episodes for every method."""
    blurs = tuple(cfg.cost.blurs)
    planner = planner_for(cfg, cfg.simulator_planner if method == "true_simulator" else method, model.action_dim)
    # random never asks its model; the simulator stands in so the loop is the same
    model_at = world_model_at(cfg, model) if method in ("cem", "mppi") else (lambda env: SimulatorModel(env, blurs))
    horizon, results = cfg.planner.horizon, []
    for i in range(cfg.episodes):
        env.reset(episode_seed(cfg.seed, i))
        episode = run_mpc(env, planner, model_at, lambda env: env.goal_clip(horizon), budget=cfg.budget)
        result = EpisodeResult(
            reached=episode.reached,
            final_distance=env.distance(),
            steps=len(env.actions),
            seconds=episode.seconds,
            positions=np.stack(env.positions),
            frames=env.frames,
            goal=env.goal,
            goal_frame=env.goal_frame,
        )
        results.append(result)
        log.info(
            "%s episode %d: reached=%s, distance %.3f after %d steps",
            method,
            i,
            result.reached,
            result.final_distance,
            result.steps,
        )
    return results


def method_records(method: str, results: list[EpisodeResult], horizon: int) -> list[Record]:
    seconds = [s for r in results for s in r.seconds]
    values = {
        "success_rate": float(np.mean([r.reached for r in results])),
        "final_distance": float(np.mean([r.final_distance for r in results])),
        "steps": float(np.mean([r.steps for r in results])),
        "seconds_per_step": float(np.mean(seconds)) if seconds else 0.0,
    }
    return [Record(DATASET, method, horizon, metric, value) for metric, value in values.items()]


def candidates_sweep(cfg: DictConfig, model: ActionWorld, env: ReachEnv, repeats: int = 3) -> dict[int, float]:
    """Seconds per planning step (conditioning the model + one CEM plan, median of `repeats`) for
    each number of candidates in cfg.candidates, at episode 0's start; elites scale with S."""
    env.reset(episode_seed(cfg.seed, 0))
    model_at, goal = world_model_at(cfg, model), env.goal_clip(cfg.planner.horizon)
    seconds = {}
    for s in cfg.candidates:
        elites = max(2, round(s * cfg.planner.elites / cfg.planner.samples))
        planner = planner_for(cfg, "cem", model.action_dim, samples=s, elites=elites)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            planner.plan(model_at(env), goal)
            times.append(time.perf_counter() - start)
        seconds[s] = float(np.median(times))
    return seconds


def episodes_figure(path: Path, runs: dict[str, list[EpisodeResult]], *, count: int, tolerance: float) -> Path:
    """One row per episode: its start, its goal, then each method's last frame with the executed
    trajectory (start: dot, end: cross, green when the goal was reached) and the tolerance circle."""
    methods = list(runs)
    count = min(count, len(runs[methods[0]]))
    cols = 2 + len(methods)
    fig, axes = plt.subplots(count, cols, figsize=(1.9 * cols, 1.9 * count), squeeze=False)
    for i in range(count):
        first = runs[methods[0]][i]
        radius = tolerance * min(first.goal_frame.shape[-2:])
        panels = [("start", first.frames[0], None), ("goal", first.goal_frame, None)]
        panels += [(m, runs[m][i].frames[-1], runs[m][i]) for m in methods]
        for ax, (title, frame, run) in zip(axes[i], panels, strict=True):
            ax.imshow(frame.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.add_patch(plt.Circle(tuple(first.goal), radius, fill=False, color="lime", lw=1))
            if run is not None:
                x, y = run.positions[:, 0] - 0.5, run.positions[:, 1] - 0.5  # pixel centres sit at +0.5
                ax.plot(x, y, "-", color="yellow", lw=1)
                ax.plot(x[0], y[0], "o", color="yellow", ms=3)
                ax.plot(x[-1], y[-1], "x", color="lime" if run.reached else "red", ms=5)
                title = f"{title}: {'reached' if run.reached else 'missed'}, {run.steps} steps"
            ax.set_title(title, fontsize=7)
    return save_figure(fig, path)


def episode_gif(path: Path, runs: dict[str, list[EpisodeResult]], episode: int = 0) -> Path:
    """One episode as an animated GIF: the goal, then each method's observed frame, step by step (a
    method that stopped early holds its last frame)."""
    steps = max(len(results[episode].frames) for results in runs.values())
    goal = unit_images(to_unit(runs[next(iter(runs))][episode].goal_frame))
    frames = []
    for t in range(steps):
        cells = [unit_images(to_unit(r[episode].frames[min(t, len(r[episode].frames) - 1)])) for r in runs.values()]
        frames.append([goal, *cells])
    return animated_grid(frames, path, columns=1 + len(runs))


def closed_loop(
    cfg: DictConfig, model: ActionWorld, out_dir: Path, *, world_ckpt: Path, train_seconds: dict[str, float]
) -> Path:
    """Every method over the held-out episodes, the cost-per-step sweep, the figures and the report."""
    size = model.frame_size
    env = ReachEnv(
        ActionSource(height=size, width=size, **cfg.env), tolerance=cfg.tolerance, min_distance=cfg.min_distance
    )
    horizon = cfg.planner.horizon
    runs = {method: run_method(cfg, method, model, env) for method in cfg.methods}
    records = [r for method, results in runs.items() for r in method_records(method, results, horizon)]
    sweep = candidates_sweep(cfg, model, env) if cfg.candidates else {}
    sweep_records = [Record(DATASET, "cem", horizon, f"seconds_per_step_{s}_candidates", v) for s, v in sweep.items()]
    write_metrics(records + sweep_records, out_dir / "metrics.json")
    figure = episodes_figure(out_dir / "episodes.png", runs, count=cfg.figure_episodes, tolerance=cfg.tolerance)
    gif = episode_gif(out_dir / "episode.gif", runs)
    lines = [
        "# Planning with the action world model: synthetic reach task, closed loop",
        "",
        metrics_table(records, lower_is_better=LOWER_IS_BETTER),
        "",
        f"- {cfg.episodes} held-out episodes (the same for every method), at most {cfg.budget} actions each; "
        f"success: the agent within {cfg.tolerance} frame sizes of the goal position; start and goal at least "
        f"{cfg.min_distance} apart. final_distance in frame sizes; steps: actions taken (the episode stops at "
        "the goal); seconds_per_step: conditioning the model on the newest frames + one plan.",
        f"- MPC: re-plan every step over H={horizon} actions, execute the first; planner "
        f"{OmegaConf.to_container(cfg.planner, resolve=True)}; the plan starts from the previous one, shifted. "
        f"true_simulator: {cfg.simulator_planner} with the simulator as its model (the upper bound); random: "
        "uniform actions in the bounds.",
        f"- cost: blurred pixel distance (sigmas {list(cfg.cost.blurs)} of the frame) between the decoded predicted "
        "frames and the goal at each predicted step, averaged over the steps (worldmodel/planning.py).",
        f"- world model: {world_ckpt}, conditioned on its newest {cfg.context} frames; "
        f"frames {size} px; device {cfg.device}.",
    ]
    if train_seconds:
        lines.append(
            "- trained here: "
            + ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in train_seconds.items())
        )
    if sweep:
        lines += ["", "## Planner cost per step against the number of candidates", ""]
        lines += [f"cem, {cfg.planner.iterations} iterations, H={horizon}, one observation (median of 3):", ""]
        lines += ["| candidates | seconds per step |", "|---|---|"]
        lines += [f"| {s} | {v:.3f} |" for s, v in sweep.items()]
    for caption, path in (("Episodes (start, goal, executed trajectories)", figure), ("One episode", gif)):
        lines += ["", f"## {caption}", "", f"![{caption}]({path.name})"]
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    for r in records:
        log.info("%s %s = %.4g", r.method, r.metric, r.value)
    return report
