"""Synthetic video whose motion is driven by known per-frame actions, and the same world as a
step-wise simulator with a reach task (`ReachEnv`).

An agent (a bright square with a dark core, so its motion is visible on any background) is moved
by 2-D actions over the synthetic set's textured scene (static camera; its shapes keep moving on
their own as distractors). Action a_t in [-1, 1]^2 is taken at frame t and moves the agent by
a_t * max_step frame sizes before frame t + 1, so the next frame is not predictable from the past
alone: a world model that uses the actions must beat one that does not.
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from deltaworld.data.synthetic import Scene, render_scene, sample_scene


def agent_step(pos: np.ndarray, action: np.ndarray, size: np.ndarray, half: float, max_step: float) -> np.ndarray:
    """Agent centres (..., 2) in pixels (x, y) after actions (..., 2): a move of action * max_step
    frame sizes, clamped so the agent stays inside the frame."""
    return np.clip(pos + action * max_step * size, half, size - half)


def agent_path(
    rng: np.random.Generator, actions: np.ndarray, size: np.ndarray, half: float, max_step: float
) -> np.ndarray:
    """Agent centres (T, 2) in pixels (x, y): a random start, then one action-driven move per frame."""
    pos = np.empty_like(actions)
    pos[0] = rng.uniform(half, size - half)
    for t in range(1, len(actions)):
        pos[t] = agent_step(pos[t - 1], actions[t - 1], size, half, max_step)
    return pos


def draw_agent(frames: np.ndarray, centres: np.ndarray, half: float) -> np.ndarray:
    """frames uint8 (..., 3, H, W) with the agent drawn at centres (..., 2) (a new array; the
    leading dims broadcast)."""
    h, w = frames.shape[-2:]
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    cx, cy = centres[..., 0, None, None], centres[..., 1, None, None]
    dist = np.maximum(np.abs(xs - cx), np.abs(ys - cy))[..., None, :, :]  # (..., 1, H, W) Chebyshev: a square
    out = np.where(dist <= half, np.uint8(245), frames)
    return np.where(dist <= half / 3, np.uint8(20), out)


class ActionSource:
    """Clips {"frames" uint8 (T, 3, H, W), "timestamps" float32 (T,), "actions" float32 (T, 2)}
    at a fixed frame rate (actions are per frame)."""

    action_dim = 2

    def __init__(
        self,
        *,
        num_frames: int = 8,
        height: int = 64,
        width: int = 64,
        fps: float = 10.0,
        max_step: float = 0.08,
        agent_size: float = 0.22,
        num_distractors: int = 1,
    ) -> None:
        if num_frames < 1 or fps <= 0 or max_step <= 0 or not 0 < agent_size < 1:
            raise ValueError(
                f"need num_frames >= 1, fps > 0, max_step > 0 and 0 < agent_size < 1; got "
                f"{num_frames}, {fps}, {max_step}, {agent_size}"
            )
        self.num_frames, self.height, self.width, self.fps = num_frames, height, width, fps
        self.max_step, self.agent_size, self.num_distractors = max_step, agent_size, num_distractors

    @property
    def size(self) -> np.ndarray:
        """(width, height) in pixels, as agent positions are (x, y)."""
        return np.array([self.width, self.height], dtype=np.float64)

    @property
    def half(self) -> float:
        """Half the agent's side in pixels."""
        return self.agent_size * min(self.height, self.width) / 2

    def sample_world(self, rng: np.random.Generator) -> Scene:
        """The scene the agent moves over: only the agent and the distractors move."""
        scene = sample_scene(rng, height=self.height, width=self.width, num_shapes=self.num_distractors)
        scene.cam_vel = np.zeros(2)
        return scene

    def render(self, scene: Scene, times: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """Frames uint8 (..., T, 3, H, W) of `scene` at times (T,) seconds with the agent at
        centres (..., T, 2): the scene is rendered once per time, however many agent paths."""
        return draw_agent(render_scene(scene, times)["frames"].numpy(), centres, self.half)

    def sample_clip(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        scene = self.sample_world(rng)
        times = np.arange(self.num_frames) / self.fps
        actions = rng.uniform(-1, 1, (self.num_frames, self.action_dim))
        centres = agent_path(rng, actions, self.size, self.half, self.max_step)
        return {
            "frames": torch.from_numpy(self.render(scene, times, centres)),
            "timestamps": torch.from_numpy(times.astype(np.float32)),
            "actions": torch.from_numpy(actions.astype(np.float32)),
        }


REACH_STREAM = 2  # beside data.stream's training (0) and evaluation (1) streams


def episode_seed(seed: int, episode: int) -> list[int]:
    """The seed of reach episode `episode`: never one a training or validation clip of any seed is
    drawn from (those are [seed, index, attempt, stream] with stream 0 or 1)."""
    return [seed, episode, REACH_STREAM]


class ReachEnv:
    """The reach task in ActionSource's world, one step at a time: `reset(seed)` draws a scene, an
    agent start and a goal position at least `min_distance` frame sizes away (the goal is shown as
    `goal_frame`: the scene at time 0 with the agent at the goal), `step(action)` moves the agent and
    renders the next frame. Success: the agent within `tolerance` frame sizes of the goal (Euclidean,
    per-axis fractions of width and height). Actions are clipped to [-1, 1]^2, the range of the
    training clips. Frames are rendered by the clips' own code, so an episode looks like a clip."""

    def __init__(self, source: ActionSource, *, tolerance: float = 0.08, min_distance: float = 0.3) -> None:
        if not 0 < tolerance < min_distance:
            raise ValueError(f"need 0 < tolerance < min_distance, got {tolerance}, {min_distance}")
        self.source, self.tolerance, self.min_distance = source, tolerance, min_distance

    @property
    def action_dim(self) -> int:
        return self.source.action_dim

    def _draw_position(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.source.half, self.source.size - self.source.half)

    def reset(self, seed: int | Sequence[int]) -> dict[str, torch.Tensor]:
        """A new episode: {"frame" uint8 (3, H, W), "position" (2,) px (x, y), "goal" (2,) px,
        "goal_frame" uint8 (3, H, W)}. The history (frames, positions, actions) restarts.
        `episode_seed` gives held-out episodes."""
        rng = np.random.default_rng(seed)
        self.scene = self.source.sample_world(rng)
        start = self._draw_position(rng)
        # a goal too close to the start would make a trivial episode; the region is never empty
        # since min_distance < 1 and start and goal range over most of the frame
        goal = self._draw_position(rng)
        while self.distance(start, goal) < self.min_distance:
            goal = self._draw_position(rng)
        self.goal = goal
        self.goal_frame = torch.from_numpy(self.source.render(self.scene, np.zeros(1), goal[None])[0])
        self.positions, self.actions = [start], []
        self.frames = [torch.from_numpy(self.source.render(self.scene, np.zeros(1), start[None])[0])]
        return {
            "frame": self.frames[0],
            "position": torch.from_numpy(start),
            "goal": torch.from_numpy(goal),
            "goal_frame": self.goal_frame,
        }

    @property
    def time(self) -> float:
        """Seconds since the episode started: the time of the newest frame."""
        return len(self.actions) / self.source.fps

    def step(self, action: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Take action (A,) at the newest frame -> {"frame" uint8 (3, H, W), "position" (2,) px}."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(self.action_dim), -1, 1)
        pos = agent_step(self.positions[-1], a, self.source.size, self.source.half, self.source.max_step)
        self.actions.append(torch.from_numpy(a.astype(np.float32)))
        self.positions.append(pos)
        self.frames.append(torch.from_numpy(self.source.render(self.scene, np.array([self.time]), pos[None])[0]))
        return {"frame": self.frames[-1], "position": torch.from_numpy(pos)}

    def imagine(self, actions: torch.Tensor) -> torch.Tensor:
        """The true simulator as a world model: the frames uint8 (S, H, 3, h, w) that taking each
        of S action sequences (S, H, A) from now would show, leaving the episode as it is."""
        a = np.clip(actions.detach().cpu().double().numpy(), -1, 1)
        pos = np.broadcast_to(self.positions[-1], a.shape[:1] + (2,))
        centres = []
        for step in range(a.shape[1]):
            pos = agent_step(pos, a[:, step], self.source.size, self.source.half, self.source.max_step)
            centres.append(pos)
        times = self.time + np.arange(1, a.shape[1] + 1) / self.source.fps
        return torch.from_numpy(self.source.render(self.scene, times, np.stack(centres, 1)))

    def goal_clip(self, horizon: int) -> torch.Tensor:
        """The goal as a planner sees it over its horizon: frames uint8 (horizon, 3, H, W), the scene
        at each of the next `horizon` frame times with the agent at the goal. The distractors move on
        their own, so one goal frame would also show where they were when it was rendered, and a pixel
        cost would reward covering them; at the times predicted, only the agent differs."""
        times = self.time + np.arange(1, horizon + 1) / self.source.fps
        return torch.from_numpy(self.source.render(self.scene, times, np.broadcast_to(self.goal, (horizon, 2))))

    def distance(self, a: np.ndarray | None = None, b: np.ndarray | None = None) -> float:
        """Frame sizes between two positions (px); by default between the agent and the goal."""
        a = self.positions[-1] if a is None else a
        b = self.goal if b is None else b
        return float(np.linalg.norm((a - b) / self.source.size))

    def reached(self) -> bool:
        return self.distance() <= self.tolerance


def load_actions(path: str | os.PathLike, *, action_dim: int, length: int) -> torch.Tensor:
    """An actions file -> float32 (T, A): a .npy array (read without pickles) or a .json list of
    T lists of A numbers. Refused, naming the file, unless it is 2-D and numeric, finite, has
    `action_dim` columns and at least `length` rows."""
    path = Path(path)
    if path.suffix not in (".npy", ".json"):
        raise ValueError(f"actions file {path}: expected a .npy or .json file of shape (T, A)")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            array = np.asarray(json.loads(path.read_text()))
    except (ValueError, json.JSONDecodeError) as e:  # a pickled, damaged or ragged file
        raise ValueError(f"actions file {path}: unreadable ({e})") from e
    if array.dtype.kind not in "iuf":
        raise ValueError(f"actions file {path}: holds {array.dtype} values, expected numbers")
    if array.ndim != 2:
        raise ValueError(f"actions file {path}: shape {array.shape}, expected (T, A): one row of A values per frame")
    if array.shape[1] != action_dim:
        raise ValueError(f"actions file {path}: rows of {array.shape[1]} values, the model's action_dim={action_dim}")
    if array.shape[0] < length:
        raise ValueError(f"actions file {path}: {array.shape[0]} rows, the rollout needs at least {length}")
    if not np.isfinite(array).all():
        raise ValueError(f"actions file {path}: holds NaN or infinite values")
    return torch.from_numpy(array.astype(np.float32))
