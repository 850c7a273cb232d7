"""Synthetic video whose motion is driven by known per-frame actions.

An agent (a bright square with a dark core, so its motion is visible on any background) is moved
by 2-D actions over the synthetic set's textured scene (static camera; its shapes keep moving on
their own as distractors). Action a_t in [-1, 1]^2 is taken at frame t and moves the agent by
a_t * max_step frame sizes before frame t + 1, so the next frame is not predictable from the past
alone: a world model that uses the actions must beat one that does not.
"""

import numpy as np
import torch

from deltaworld.data.synthetic import render_scene, sample_scene


def agent_path(
    rng: np.random.Generator, actions: np.ndarray, size: np.ndarray, half: float, max_step: float
) -> np.ndarray:
    """Agent centres (T, 2) in pixels (x, y): a random start, then one action-driven move per
    frame, clamped so the agent stays inside the frame."""
    lo, hi = half, size - half
    pos = np.empty_like(actions)
    pos[0] = rng.uniform(lo, hi)
    for t in range(1, len(actions)):
        pos[t] = np.clip(pos[t - 1] + actions[t - 1] * max_step * size, lo, hi)
    return pos


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

    def sample_clip(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        h, w, t = self.height, self.width, self.num_frames
        scene = sample_scene(rng, height=h, width=w, num_shapes=self.num_distractors)
        scene.cam_vel = np.zeros(2)  # only the agent and the distractors move
        times = np.arange(t) / self.fps
        clip = render_scene(scene, times)
        actions = rng.uniform(-1, 1, (t, self.action_dim))
        half = self.agent_size * min(h, w) / 2
        centres = agent_path(rng, actions, np.array([w, h], dtype=np.float64), half, self.max_step)
        frames = clip["frames"].numpy().copy()  # (T, 3, H, W)
        ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
        for i, (cx, cy) in enumerate(centres):
            dist = np.maximum(np.abs(xs - cx), np.abs(ys - cy))  # (H, W) Chebyshev distance: a square
            frames[i][:, dist <= half] = 245
            frames[i][:, dist <= half / 3] = 20
        return {
            "frames": torch.from_numpy(frames),
            "timestamps": clip["timestamps"],
            "actions": torch.from_numpy(actions.astype(np.float32)),
        }
