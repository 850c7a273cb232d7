"""Tiny random-init models and generated data shared by the suite."""

import os
import warnings
from functools import partial
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from deltaworld.data.sources import SyntheticSource
from deltaworld.tokenizer.backbone import build_backbone
from deltaworld.tokenizer.deltatok import DeltaTok
from deltaworld.tokenizer.training import warmup_constant

matplotlib.use("Agg")  # figures are files: the headless backend, as `deltaworld` chooses for its commands
# OMP_NUM_THREADS wins: on a loaded machine two spinning threads make tiny ops many times slower
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))

FRAME = 56  # 4x4 patch grid at patch 14
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture
def reference_dir() -> Path:
    """The reference implementation's test vectors (../shared/reference). Missing, they skip the
    test with the reason, except under CI=true, where parity is a required check and fails."""
    if not REFERENCE.is_dir():
        message = f"reference vectors not found at {REFERENCE} (they ship in the shared/ folder beside the checkout)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_backbone():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_backbone(img_size=FRAME, arch={"depth": 2, "embed_dim": 64, "num_heads": 4})


def make_deltatok(backbone, **kw) -> DeltaTok:
    torch.manual_seed(0)
    return DeltaTok(dim=backbone.dim, num_heads=backbone.num_heads, depth=kw.pop("depth", 2), **kw)


@pytest.fixture
def tiny_deltatok(tiny_backbone):
    return make_deltatok(tiny_backbone)


# a stage's `optimizer` and `scheduler` partials for modules built without Hydra (conf/ has the real ones)
OPTIMIZATION = {
    "optimizer": partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-2),
    "scheduler": partial(warmup_constant, warmup_steps=0),
}


def synthetic_batch(batch: int = 2, frames: int = 4, size: int = FRAME, seed: int = 0) -> dict:
    source = SyntheticSource(num_frames=frames, height=size, width=size)
    clips = [source.sample_clip(np.random.default_rng([seed, i])) for i in range(batch)]
    return {k: torch.stack([c[k] for c in clips]) for k in clips[0]}


def compose_train(overrides: list[str], tmp_path, config_name: str = "train"):
    """The `deltaworld train` config with a run directory under tmp_path."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="deltaworld.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=[f"run_dir={tmp_path}", *overrides])
