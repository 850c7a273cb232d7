"""Composing the package's own Hydra configs (`deltaworld.conf`) from Python: the architecture of
a preset for an import, the presets a benchmark measures, the demo's world-model stages."""

from collections.abc import Sequence
from contextlib import nullcontext

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The primary config `name` (e.g. "train") composed with `overrides`."""
    # inside a command's Hydra app the search path is already set, and initializing again is an error
    running = GlobalHydra.instance().is_initialized()
    with nullcontext() if running else initialize_config_module(config_module="deltaworld.conf", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
