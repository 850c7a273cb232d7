"""Planning with a world model: CEM / MPPI recover a known action sequence on exact toy dynamics,
CEM's cost falls over its iterations, MPC stops at the goal, the reach environment renders as the
action clips do, given actions steer the pixel world model's futures, actions files are checked,
and `deltaworld sample actions=` / `deltaworld plan` run end to end on tiny models."""

import json

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image
from safetensors.torch import load_file

from deltaworld.cli import main as cli_main
from deltaworld.data.actions import ActionSource, ReachEnv, agent_step, episode_seed, load_actions
from deltaworld.eval.configs import compose_config
from deltaworld.eval.plan import METHODS, run_plan
from deltaworld.eval.plan_models import PixelActionWorld
from deltaworld.eval.records import read_metrics
from deltaworld.tokenizer.checkpoint import export_safetensors
from deltaworld.tokenizer.fit import run_training
from deltaworld.tokenizer.pixel import PixelDeltaToken
from deltaworld.tokenizer.schema import stamp
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.planning import CEM, MPPI, build_planner, run_mpc


class Integrator:
    """Exact toy dynamics: state_h = start + a_0 + ... + a_h; cost = squared distance to a goal
    trajectory (H, A), summed over the steps."""

    def __init__(self, start: torch.Tensor) -> None:
        self.start = start

    def predict(self, actions: torch.Tensor) -> torch.Tensor:
        return self.start + actions.cumsum(1)  # (S, H, A)

    def cost(self, states: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return (states - goal).pow(2).sum((1, 2))


class PointEnv:
    """A point moved by its actions (state += action); reached within `tolerance` of the goal."""

    def __init__(self, goal: torch.Tensor, tolerance: float = 0.05) -> None:
        self.goal, self.tolerance = goal, tolerance
        self.state, self.frames, self.actions = torch.zeros(2), [torch.zeros(2)], []

    def step(self, action: torch.Tensor) -> None:
        self.state = self.state + action
        self.actions.append(action)
        self.frames.append(self.state)

    def reached(self) -> bool:
        return bool((self.state - self.goal).norm() <= self.tolerance)


def known_sequence(horizon: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    actions = torch.rand(horizon, 2, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8  # (H, A)
    return actions, actions.cumsum(0)  # the goal trajectory they drive a start at 0 along


@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_planner_recovers_a_known_action_sequence_on_exact_dynamics(method):
    actions, goal = known_sequence()
    planner = build_planner(
        method, horizon=4, action_dim=2, samples=256, iterations=12, elites=16, temperature=0.1, std=0.5
    )
    plan = planner.plan(Integrator(torch.zeros(2)), goal)
    assert plan.actions.shape == (4, 2)
    torch.testing.assert_close(plan.actions, actions, atol=0.08, rtol=0)


def test_cem_cost_falls_over_iterations_and_planners_take_keyword_options_only():
    _, goal = known_sequence()
    plan = CEM(horizon=4, action_dim=2, samples=64, iterations=6, elites=8).plan(Integrator(torch.zeros(2)), goal)
    assert all(b <= a for a, b in zip(plan.history, plan.history[1:], strict=False)), plan.history
    assert plan.history[-1] < 0.3 * plan.history[0]
    with pytest.raises(TypeError):
        CEM(4, 2)  # the builders are keyword-only
    with pytest.raises(ValueError, match="elites=80"):
        CEM(horizon=4, action_dim=2, samples=64, elites=80)
    with pytest.raises(ValueError, match="unknown planner options"):
        build_planner("cem", horizon=4, action_dim=2, temprature=0.1)
    # one option block serves every method: what a method does not take is left out
    assert isinstance(build_planner("mppi", horizon=4, action_dim=2, elites=8), MPPI)


def test_mpc_stops_at_the_goal_or_after_its_budget():
    planner = CEM(horizon=3, action_dim=2, samples=64, iterations=3, elites=8, low=-0.3, high=0.3)
    toy = lambda env: Integrator(env.state)  # noqa: E731
    goal = torch.tensor([1.0, -0.6])
    env = PointEnv(goal)
    episode = run_mpc(env, planner, toy, lambda env: goal.expand(3, 2), budget=30)
    assert episode.reached and env.reached() and len(env.actions) < 30
    # it stopped the step it arrived: no state before the last one was at the goal
    assert all((s - goal).norm() > env.tolerance for s in env.frames[:-1])
    assert len(episode.seconds) == len(env.actions) == episode.actions.shape[0]
    far = PointEnv(torch.tensor([50.0, 0.0]))
    episode = run_mpc(far, planner, toy, lambda env: far.goal.expand(3, 2), budget=5)
    assert not episode.reached and len(far.actions) == 5


def test_reach_env_renders_as_the_action_clips_and_imagines_its_own_steps():
    source = ActionSource(height=32, width=32, num_distractors=1)
    env = ReachEnv(source, tolerance=0.08)
    obs = env.reset(episode_seed(0, 3))
    assert obs["frame"].shape == (3, 32, 32) and obs["frame"].dtype == torch.uint8
    assert env.distance() >= env.min_distance and not env.reached()
    # the goal frame is the scene with the agent at the goal; frames are ActionSource's renders
    expected = source.render(env.scene, np.zeros(1), env.goal[None])[0]
    assert np.array_equal(obs["goal_frame"].numpy(), expected)
    plan = torch.tensor([[[0.5, -1.0], [1.0, 0.25], [-0.3, 0.6]]])  # (1, H, A)
    imagined = env.imagine(plan)[0]  # (H, 3, h, w): before stepping
    start = env.positions[0].copy()
    for h in range(3):
        out = env.step(plan[0, h])
        assert torch.equal(out["frame"], imagined[h])
    moved = agent_step(start, plan[0, 0].double().numpy(), source.size, source.half, source.max_step)
    np.testing.assert_allclose(env.positions[1], moved)
    np.testing.assert_allclose(env.positions[1] - start, plan[0, 0].numpy() * source.max_step * 32, atol=1e-5)
    # the goal clip shows the agent at the goal at the next frame times
    assert torch.equal(
        env.goal_clip(2)[0], torch.from_numpy(source.render(env.scene, np.array([0.4]), env.goal[None])[0])
    )
    # an agent at the goal has reached it
    env.positions.append(env.goal.copy())
    assert env.reached()


def tiny_pixel_world(seed: int = 0) -> PixelActionWorld:
    torch.manual_seed(seed)
    tok = PixelDeltaToken(patch_size=4, dim=32, num_heads=2, depth=1, num_tokens=2, token_dim=8, layer_scale_init=1.0)
    torch.nn.init.normal_(tok.head[1].weight, std=0.05)  # a zero head would repeat the reference whatever the tokens
    world = DeltaWorld(token_dim=10, tokens_per_frame=2, dim=32, depth=2, num_heads=2, rope_dim=8, layer_scale_init=1.0)
    return PixelActionWorld(world.eval(), tok.eval(), action_dim=2, frame_size=16)


def test_given_actions_steer_the_pixel_world_models_futures():
    model = tiny_pixel_world()
    clip = ActionSource(num_frames=5, height=16, width=16).sample_clip(np.random.default_rng(0))
    frames, actions = clip["frames"], clip["actions"]
    world = model.planning_model(frames[:2], actions[:1], fps=10.0, blurs=(0.2,), seed=0)
    given = torch.rand(4, 3, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (S, H, A)
    futures = world.predict(given)  # (S, H, 3, h, w)
    assert futures.shape == (4, 3, 3, 16, 16)
    # every candidate is rolled out with the same noise: equal actions give equal futures ...
    same = world.predict(given[:1].expand(4, -1, -1))
    assert torch.allclose(same[0], same[3]) and torch.allclose(same[0], futures[0], atol=1e-6)
    # ... and other actions other futures, from the first step on (its action is the context's last)
    shuffled = world.predict(given.roll(1, 0))
    assert not torch.allclose(futures[:, 0], shuffled[:, 0])
    torch.testing.assert_close(shuffled[1], futures[0], atol=1e-6, rtol=0)
    assert world.cost(futures, clip["frames"][4]).shape == (4,)

    # M futures under given actions (`deltaworld sample actions=`): shuffled actions change them
    def futures_under(future_actions):
        return model.futures(
            frames[None, :2],
            clip["timestamps"][None, :2],
            actions[None, :2],
            clip["timestamps"][None, 2:],
            future_actions,
            samples=2,
            generator=torch.Generator().manual_seed(0),
        )

    tokens, a = futures_under(actions[None, 2:])
    _, b = futures_under(actions[None, 2:].flip(1))
    assert tokens.shape == (1, 2, 3, 2, 10) and a.shape == (1, 2, 3, 3, 16, 16)
    assert torch.equal(a[:, :, 0], b[:, :, 0]) and not torch.allclose(a[:, :, 1:], b[:, :, 1:])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.npy", np.zeros(4), r"shape \(4,\), expected \(T, A\)"),
        ("a.npy", np.zeros((4, 3)), "rows of 3 values, the model's action_dim=2"),
        ("a.npy", np.zeros((2, 2)), "2 rows, the rollout needs at least 3"),
        ("a.npy", np.array([[0.0, np.nan]] * 3), "NaN or infinite"),
        ("a.npy", np.array([[0, "x"]] * 3, dtype=object), "unreadable"),  # pickled: refused
        ("a.npy", np.ones((3, 2), dtype=bool), "holds bool values"),
        ("a.json", "[[0, 1], [0]]", "unreadable"),  # ragged
        ("a.json", '[["0", "1"]]', "expected numbers"),
        ("a.json", "{", "unreadable"),
        ("a.csv", "0,1", "expected a .npy or .json file"),
    ],
)
def test_actions_files_are_checked(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=True)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_actions(path, action_dim=2, length=3)


def test_actions_files_load(tmp_path):
    np.save(tmp_path / "a.npy", np.full((4, 2), 0.5, dtype=np.float64))
    (tmp_path / "a.json").write_text("[[1, -1], [0.5, 0], [0, 0]]")
    assert torch.equal(load_actions(tmp_path / "a.npy", action_dim=2, length=4), torch.full((4, 2), 0.5))
    assert load_actions(tmp_path / "a.json", action_dim=2, length=3).dtype == torch.float32


TINY_TOKENIZER = [
    "experiment=pixel_actions_cpu",
    "frame_size=16",
    "tokenizer.patch_size=4",
    "tokenizer.dim=32",
    "tokenizer.num_heads=2",
    "tokenizer.depth=1",
    "tokenizer.num_tokens=2",
    "tokenizer.token_dim=8",
    "tokenizer.diffusion=null",
    "data.batch_size=2",
    "data.source.num_frames=3",
    "data.val_clips=2",
    "trainer.max_steps=1",
    "trainer.val_check_interval=100",
    "~callbacks.progress_bar",
    "trainer.enable_model_summary=false",
]
TINY_WORLD = [
    "experiment=pixel_world_actions_cpu",
    "frame_size=16",
    "world.dim=32",
    "world.depth=1",
    "world.num_heads=2",
    "world.rope_dim=12",
    "module.num_hypotheses=2",
    "module.eval_samples=2",
    "data.batch_size=2",
    "data.source.num_frames=4",
    "data.val_clips=2",
    "trainer.max_steps=1",
    "trainer.val_check_interval=100",
    "~callbacks.progress_bar",
    "trainer.enable_model_summary=false",
]
TINY_PLAN = [
    "planner.horizon=2",
    "planner.samples=8",
    "planner.iterations=1",
    "planner.elites=2",
    "episodes=2",
    "budget=2",
    "candidates=[4,8]",
    "figure_episodes=2",
]


@pytest.fixture(scope="module")
def plan_run(tmp_path_factory):
    """`deltaworld plan experiment=plan_cpu` with the training stages cut to a step each on tiny models."""
    out = tmp_path_factory.mktemp("plan")
    cfg = compose_config("plan", ["experiment=plan_cpu", f"out_dir={out}", *TINY_PLAN])
    with open_dict(cfg):
        cfg.train.tokenizer, cfg.train.world = TINY_TOKENIZER, TINY_WORLD
    return out, run_plan(cfg, train_stage=run_training)


def test_plan_trains_its_models_and_reports_every_method(plan_run):
    out, report = plan_run
    assert (out / "tokenizer" / "tokenizer.safetensors").is_file() and (out / "world" / "world.safetensors").is_file()
    records = read_metrics(out / "metrics.json")
    metrics = ("success_rate", "final_distance", "steps", "seconds_per_step")
    assert {(r.method, r.metric) for r in records} >= {(m, k) for m in METHODS for k in metrics}
    assert {r.metric for r in records if r.method == "cem"} >= {"seconds_per_step_4_candidates"}
    assert all(r.dataset == "synthetic_reach" and r.horizon == 2 for r in records)
    assert all(0 <= r.value <= 1 for r in records if r.metric == "success_rate")
    text = report.read_text()
    assert "| synthetic_reach | true_simulator |" in text and "episodes.png" in text and "trained here" in text
    assert (out / "episodes.png").stat().st_size > 0 and (out / "episode.gif").stat().st_size > 0


def test_plan_and_sample_commands_take_an_action_world_export(plan_run, tmp_path):
    out, _ = plan_run
    world = out / "world" / "world.safetensors"
    env = ReachEnv(ActionSource(height=16, width=16))
    obs = env.reset(0)
    start, goal = tmp_path / "start.png", tmp_path / "goal.png"
    Image.fromarray(obs["frame"].permute(1, 2, 0).numpy()).save(start)
    Image.fromarray(obs["goal_frame"].permute(1, 2, 0).numpy()).save(goal)
    cli_main(["plan", f"world_ckpt={world}", f"start={start}", f"goal={goal}", f"out_dir={tmp_path}", *TINY_PLAN])
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert np.array(plan["actions"]).shape == (2, 2) and (tmp_path / "plan.png").is_file()

    actions = tmp_path / "actions.npy"
    np.save(actions, np.zeros((3, 2), dtype=np.float32))
    sample = tmp_path / "sample"
    args = ["sample", f"world_ckpt={world}", "context=2", "horizon=3", "samples=2", f"out_dir={sample}"]
    cli_main([*args, f"actions={actions}"])
    saved = load_file(str(sample / "samples.safetensors"))
    assert saved["frames"].shape == (2, 3, 3, 16, 16) and saved["frames"].dtype == torch.uint8
    assert all((sample / name).is_file() for name in ("hypotheses.png", "futures.gif", "diversity.json"))
    with pytest.raises(SystemExit):  # an action world model without actions=
        cli_main(args)


def test_sample_refuses_actions_for_a_world_model_without_them(tmp_path, capsys):
    export = export_safetensors(torch.nn.Linear(1, 1), tmp_path / "world.safetensors", stamp("world", {}))
    np.save(tmp_path / "actions.npy", np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(SystemExit):
        cli_main(["sample", f"world_ckpt={export}", f"actions={tmp_path / 'actions.npy'}", f"out_dir={tmp_path}"])
    assert "is a world model without actions" in capsys.readouterr().err
    cfg = compose_config("plan", [f"world_ckpt={export}", f"out_dir={tmp_path}"])
    with pytest.raises(ValueError, match="not a pixel_world export"):
        run_plan(cfg, train_stage=run_training)
