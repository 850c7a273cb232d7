"""Token caches: a training set's tokens computed once by the frozen tokenizer, stored with a
fingerprint of everything that produced them, so the world model trains without the backbone.

A cache whose fingerprint differs from the current run's (other tokenizer weights, backbone, frame
size, data source, clip count, seed) is refused with the differing fields named: never silently reused.
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from data.stream import PositionedStream

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "fingerprint"


class StaleCacheError(RuntimeError):
    """The cache on disk was produced by a different configuration or different weights."""


def short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe_source(source) -> dict:
    """Type and settings of a clip source (its fingerprint part); large lists enter as a hash."""
    settings = {k: v for k, v in vars(source).items() if not k.startswith("_")}
    return {"type": f"{type(source).__module__}.{type(source).__qualname__}", "settings": short_hash(settings)}


def write_token_cache(path: str | os.PathLike, tensors: dict[str, torch.Tensor], fingerprint: dict) -> Path:
    """Atomic safetensors write with the fingerprint in the header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata={FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)})
    os.replace(tmp, path)
    return path


def read_token_cache(path: str | os.PathLike, fingerprint: dict) -> dict[str, torch.Tensor]:
    """Load a cache, refusing it unless it was produced exactly as `fingerprint` says."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads((f.metadata() or {}).get(FINGERPRINT_KEY, "{}"))
    if stored != fingerprint:
        differing = sorted(k for k in stored.keys() | fingerprint.keys() if stored.get(k) != fingerprint.get(k))
        details = "; ".join(f"{k}: cache has {stored.get(k)!r}, this run needs {fingerprint.get(k)!r}" for k in differing)
        raise StaleCacheError(
            f"token cache {path} is stale: it was produced by a different configuration or different "
            f"weights ({details}). Delete it, point data.token_cache.path elsewhere, or set "
            "data.token_cache.rebuild=true."
        )
    return load_file(str(path))


@torch.no_grad()
def build_token_cache(
    path: str | os.PathLike,
    clips: Dataset,
    encode: Callable[[torch.Tensor], torch.Tensor],
    fingerprint: dict,
    *,
    batch_size: int,
    num_workers: int = 0,
) -> Path:
    """Encode every clip's frames (B, T, 3, H, W) -> tokens (B, T, K, C) and store with timestamps."""
    tokens, times = [], []
    loader = DataLoader(clips, batch_size=batch_size, num_workers=num_workers)
    for batch in tqdm(loader, desc="token cache", unit="batch"):
        tokens.append(encode(batch["frames"]).float().cpu())
        times.append(batch["timestamps"].float())
    path = write_token_cache(path, {"tokens": torch.cat(tokens), "timestamps": torch.cat(times)}, fingerprint)
    log.info("wrote token cache %s (%d clips)", path, len(clips))
    return path


class CachedClipStream(PositionedStream):
    """Infinite training stream over cached clips; sample k is clip rng(seed, k).integers(n), so the
    position follows from the step alone (exact resume), as for `ClipStream`."""

    def __init__(self, tensors: dict[str, torch.Tensor], **position) -> None:
        super().__init__(**position)
        self.tensors = tensors
        self.num_clips = len(next(iter(tensors.values())))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for index in self.indices():
            clip = int(np.random.default_rng([self.seed, index]).integers(self.num_clips))
            yield {k: v[clip] for k, v in self.tensors.items()}
