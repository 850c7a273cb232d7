"""The reference implementation's DeltaWorld checkpoint: `predictor.*` (and `q_embed.weight` when it
was trained without best-of-many), the names `worldmodel/predictor.py` uses, so loading is checking."""

import torch

from deltaworld.tokenizer.official import match_state_dict
from deltaworld.worldmodel.deltaworld import DeltaWorld

# frozen modules a full reference state dict also holds (the released file omits them)
FROZEN_PREFIXES = ("backbone.", "tokenizer.")


def is_deterministic(weights: dict[str, torch.Tensor]) -> bool:
    """The reference's use_bom=False model learns one query instead of drawing noise."""
    return "q_embed.weight" in weights


def load_official_world(world: DeltaWorld, weights: dict[str, torch.Tensor], *, source: str) -> DeltaWorld:
    """Load a reference DeltaWorld state dict into `world`, refusing it (first bad key named) unless
    every key and shape fits."""
    if world.tokens_per_frame != 1:
        raise ValueError(f"the reference predicts one token per frame; this world model has {world.tokens_per_frame}")
    world.load_state_dict(match_state_dict(weights, world.state_dict(), source=source, ignore=FROZEN_PREFIXES))
    return world
