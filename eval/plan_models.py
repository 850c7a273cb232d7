"""World models that take actions, as the action commands use them (`deltaworld sample actions=`,
`deltaworld plan`): a loaded model behind one small interface (`ActionWorld`), the loader picked
by the export's kind from a table. A feature-space action model joins with its class and a row
in ACTION_WORLDS; the commands stay as they are."""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from deltaworld.tokenizer.checkpoint import read_metadata
from deltaworld.tokenizer.pixel import PixelDeltaToken, to_unit
from deltaworld.tokenizer.schema import expect_kind
from deltaworld.worldmodel.actions import load_pixel_world, rollout_frames
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.planning import PixelWorldModel, PlanningModel

MAKE = "deltaworld train experiment=pixel_world_actions_cpu tokenizer_ckpt=<pixel tokenizer export>"


class ActionWorld(Protocol):
    action_dim: int
    frame_size: int  # the frame size it was trained at

    def futures(
        self,
        frames: torch.Tensor,
        times: torch.Tensor,
        actions: torch.Tensor,
        future_times: torch.Tensor,
        future_actions: torch.Tensor,
        *,
        samples: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """M futures of context frames uint8 (1, Tc, 3, H, W) at times (1, Tc), taken with actions
        (1, Tc, A), under future_actions (1, H, A) at future_times (1, H) -> (tokens (1, M, H, ...),
        frames (1, M, H, 3, H, W) in [-1, 1])."""

    def planning_model(
        self, frames: torch.Tensor, actions: torch.Tensor, *, fps: float, blurs: Sequence[float], seed: int
    ) -> PlanningModel:
        """The model conditioned on the newest frames uint8 (Tc, 3, H, W) and the actions (Tc - 1, A)
        taken between them, as a planner's `PlanningModel`."""


@dataclass
class PixelActionWorld:
    """An action-conditioned DeltaWorld on pixel DeltaToken tokens (a `pixel_world` export)."""

    world: DeltaWorld
    tokenizer: PixelDeltaToken
    action_dim: int
    frame_size: int

    @torch.no_grad()
    def futures(
        self,
        frames: torch.Tensor,
        times: torch.Tensor,
        actions: torch.Tensor,
        future_times: torch.Tensor,
        future_actions: torch.Tensor,
        *,
        samples: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, recon = self.tokenizer.encode_video(to_unit(frames))
        return rollout_frames(
            self.world,
            self.tokenizer,
            self.tokenizer.frame_tokens(tokens),
            recon[:, -1],
            times,
            actions,
            future_times,
            future_actions=future_actions,
            samples=samples,
            generator=generator,
        )

    def planning_model(
        self, frames: torch.Tensor, actions: torch.Tensor, *, fps: float, blurs: Sequence[float], seed: int
    ) -> PixelWorldModel:
        return PixelWorldModel(self.world, self.tokenizer, frames, actions, fps=fps, blurs=blurs, seed=seed)


def load_pixel_action_world(path: str | os.PathLike, device: torch.device) -> PixelActionWorld:
    world, tokenizer, meta = load_pixel_world(path, device)
    return PixelActionWorld(world, tokenizer, meta["action_dim"], meta["frame_size"])


# export kind -> loader of the action world model it holds
ACTION_WORLDS: dict[str, Callable[[str | os.PathLike, torch.device], ActionWorld]] = {
    "pixel_world": load_pixel_action_world,
}


def takes_actions(path: str | os.PathLike) -> bool:
    """Whether the export at `path` holds a world model conditioned on actions."""
    return read_metadata(path).get("kind") in ACTION_WORLDS


def load_action_world(path: str | os.PathLike, device: torch.device) -> ActionWorld:
    """The action world model of an export, refused (naming the file and what makes the right one)
    when the file holds another kind."""
    kind = expect_kind(path, read_metadata(path), tuple(ACTION_WORLDS), MAKE)
    return ACTION_WORLDS[kind](path, device)
