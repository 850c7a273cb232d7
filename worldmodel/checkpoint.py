"""Building a DeltaWorld for a token space, and loading an exported world model."""

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deltaworld.tokenizer.backbone import Backbone
from deltaworld.tokenizer.checkpoint import (
    export_safetensors,
    load_tokenizer,
    load_weights,
    read_metadata,
    strip_prefix,
)
from deltaworld.tokenizer.deltatok import DeltaTok
from deltaworld.tokenizer.schema import (
    Builder,
    SchemaError,
    checked_config,
    checked_field,
    expect_kind,
    legacy,
    stamp,
)
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.spaces import DeltaTokens, PatchTokens, build_space

# the builder of an export's `world` field; the token space gives its token width, count and layout
WORLD = Builder(
    DeltaWorld,
    supplied=("token_dim", "tokens_per_frame", "key_tokens"),
    legacy_targets=legacy("worldmodel.deltaworld.DeltaWorld"),
)


def build_world(
    world: DeltaWorld | Callable[..., DeltaWorld],
    space: DeltaTokens | PatchTokens,
    *,
    num_patches: int,
    feature_dim: int,
    action_dim: int = 0,
) -> DeltaWorld:
    """Finish a Hydra partial: tokens per frame and token width come from the token space, plus
    `action_dim` channels for the actions appended to every token (`worldmodel.actions.with_actions`)."""
    if isinstance(world, nn.Module):
        return world
    tokens_per_frame, token_dim = space.shape(num_patches, feature_dim)
    return world(token_dim=token_dim + action_dim, tokens_per_frame=tokens_per_frame)


def load_world(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[Backbone, DeltaTokens | PatchTokens, DeltaWorld, dict]:
    """Frozen (backbone, token space, world model, metadata) from a world-model export of
    `deltaworld train` (self-contained: it carries its tokenizer), every config checked before anything is built.
    metadata["action_dim"] is the number of action channels after the token space's (0: no actions;
    roll an action model out with `worldmodel.module.action_futures`)."""
    meta = read_metadata(path)
    expect_kind(path, meta, ("world",), "deltaworld train experiment=world_cpu_demo tokenizer_ckpt=<tokenizer export>")
    world_args = checked_config(path, meta, "world", WORLD)
    tokens_per_frame, token_dim = checked_field(path, meta, "token_shape", tuple[int, int])
    space_name = checked_field(path, meta, "space", str)
    frame_size = checked_field(path, meta, "frame_size", int)
    # exports written before action conditioning carry no field: they take no actions
    meta["action_dim"] = checked_field(path, meta, "action_dim", int) if "action_dim" in meta else 0
    backbone, deltatok = load_tokenizer(path, device)
    space = build_space(space_name, deltatok)
    grid = backbone.grid(frame_size, frame_size)
    space_tokens, space_dim = space.shape(grid[0] * grid[1], backbone.dim)
    action_dim = meta["action_dim"]
    if action_dim < 0 or [tokens_per_frame, token_dim] != [space_tokens, space_dim + action_dim]:
        raise SchemaError(
            f"{path}: token_shape {[tokens_per_frame, token_dim]} does not fit its {space_name} token space "
            f"({space_tokens} tokens of {space_dim} channels at frame_size {frame_size}) + action_dim={action_dim}"
        )
    world = WORLD.fn(**world_args, token_dim=token_dim, tokens_per_frame=tokens_per_frame)
    world.load_state_dict(strip_prefix(load_weights(path), "world."))
    world.requires_grad_(False).eval()
    return backbone, space, world.to(device), meta


def world_export(world: DeltaWorld, deltatok: DeltaTok) -> nn.Module:
    """What a world export stores: self-contained, since sampling needs the tokenizer that made the tokens."""
    return nn.ModuleDict({"world": world, "deltatok": deltatok})


def world_export_metadata(
    world: DeltaWorld, *, tokenizer_metadata: dict, world_config: dict, space: str, action_dim: int = 0
) -> dict:
    """What `load_world` needs: the tokenizer export's metadata (backbone, tokenizer, frame_size,
    ...) + the world config, the token space name, the token shape and how many of its channels
    are the action."""
    return stamp(
        "world",
        {
            **tokenizer_metadata,
            "world": world_config,
            "space": space,
            "token_shape": [world.tokens_per_frame, world.token_dim],
            "action_dim": action_dim,
        },
    )


def export_world(
    world: DeltaWorld,
    deltatok: DeltaTok,
    path: str | os.PathLike,
    *,
    tokenizer_metadata: dict,
    world_config: dict,
    space: str,
    action_dim: int = 0,
) -> Path:
    """Write the export `load_world` reads: weights under `world.` and `deltatok.` plus metadata."""
    metadata = world_export_metadata(
        world, tokenizer_metadata=tokenizer_metadata, world_config=world_config, space=space, action_dim=action_dim
    )
    return export_safetensors(world_export(world, deltatok), path, metadata)
