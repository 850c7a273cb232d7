"""Token caches: a training set's tokens computed once by the frozen tokenizer, stored with a
fingerprint of everything that produced them, so the world model trains without the backbone.

Two layouts: one safetensors file (`path` ends in .safetensors; loaded whole, exact resume) or, for
sets larger than memory, a folder of webdataset shards (one clip per sample, each tensor as .npy)
with the fingerprint in its manifest.json, streamed like video shards (data.shard_stream). The same
writer stores any per-clip tensors: tokens for the world model, or backbone features.

A cache whose fingerprint differs from the current run's (other tokenizer weights, backbone, frame
size, data source, clip count, seed) is refused with the differing fields named: never silently reused.
"""

import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deltaworld.data.shard_stream import tensors_of
from deltaworld.data.shards import MANIFEST, read_manifest
from deltaworld.data.stream import PositionedStream
from deltaworld.tokenizer.checkpoint import atomic_save_safetensors, atomic_write, atomic_write_text

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "fingerprint"
# per-frame tensors of a clip a cache stores beside its tokens when the source gives them
CLIP_EXTRAS = ("actions",)
# what a cache file (safetensors header) or shard folder (manifest) says it is
CACHE_KIND, CACHE_FORMAT_VERSION = "token_cache", 1


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
    header = {
        FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True),
        "kind": json.dumps(CACHE_KIND),
        "format_version": json.dumps(CACHE_FORMAT_VERSION),
    }
    return atomic_save_safetensors(tensors, path, header)


def is_shard_cache(path: str | os.PathLike) -> bool:
    return Path(path).suffix != ".safetensors"


def read_token_cache(path: str | os.PathLike, fingerprint: dict) -> dict[str, torch.Tensor] | list[str]:
    """Load a cache, refusing it unless it was produced exactly as `fingerprint` says: the tensors
    of a safetensors file, or the shard paths of a shard folder."""
    path = Path(path)
    if is_shard_cache(path):
        header = read_manifest(path / MANIFEST)
    else:
        try:
            with safe_open(str(path), framework="pt") as f:
                header = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        except Exception as e:  # safetensors and json raise several types for a damaged header
            raise StaleCacheError(
                f"token cache {path} does not read ({e}); delete it or set data.token_cache.rebuild=true"
            ) from None
    # caches written before kinds existed carry none; anything else must say it is a token cache
    if header.get("kind", CACHE_KIND) != CACHE_KIND or header.get("format_version", 0) > CACHE_FORMAT_VERSION:
        raise StaleCacheError(
            f"{path} is not a token cache of this code (kind {header.get('kind')!r}, "
            f"version {header.get('format_version')!r})"
        )
    stored = header.get(FINGERPRINT_KEY, {})
    if stored != json.loads(json.dumps(fingerprint)):
        differing = sorted(k for k in stored.keys() | fingerprint.keys() if stored.get(k) != fingerprint.get(k))
        details = "; ".join(
            f"{k}: cache has {stored.get(k)!r}, this run needs {fingerprint.get(k)!r}" for k in differing
        )
        raise StaleCacheError(
            f"token cache {path} is stale: it was produced by a different configuration or different "
            f"weights ({details}). Delete it, point data.token_cache.path elsewhere, or set "
            "data.token_cache.rebuild=true."
        )
    if is_shard_cache(path):
        return [str(path / shard) for shard in header["shards"]]
    return load_file(str(path))


def write_cache_shards(
    path: str | os.PathLike,
    clips: Iterable[dict[str, torch.Tensor]],
    fingerprint: dict,
    *,
    samples_per_shard: int = 1000,
) -> Path:
    """Per-clip tensors into webdataset shards under folder `path` (replaced atomically as a whole,
    each file synced to disk first), with the fingerprint in manifest.json."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    clips, shards, count = iter(clips), [], 0
    while (first := next(clips, None)) is not None:
        shards.append(f"shard-{len(shards):06d}.tar")
        with atomic_write(tmp / shards[-1]) as f, wds.TarWriter(f) as sink:
            for clip in chain([first], islice(clips, samples_per_shard - 1)):
                sink.write({"__key__": f"{count:09d}", **{f"{k}.npy": _npy(v) for k, v in clip.items()}})
                count += 1
    manifest = {
        FINGERPRINT_KEY: fingerprint,
        "num_samples": count,
        "shards": shards,
        "kind": CACHE_KIND,
        "format_version": CACHE_FORMAT_VERSION,
    }
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def _npy(tensor: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, tensor.contiguous().cpu().numpy())
    return buf.getvalue()


def decode_cached(sample: dict, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A cache shard sample -> its tensors (the ShardStream decoder of token/feature caches)."""
    return tensors_of(sample)


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
    """Encode every clip's frames (B, T, 3, H, W) -> tokens (B, T, K, C) and store with timestamps
    (and the clips' `CLIP_EXTRAS`, e.g. actions (B, T, A), where the source gives them), as one
    safetensors file or (a `path` without that suffix) a folder of shards."""
    loader = DataLoader(clips, batch_size=batch_size, num_workers=num_workers)

    def encoded() -> Iterator[dict[str, torch.Tensor]]:
        for batch in tqdm(loader, desc="token cache", unit="batch"):
            tokens = encode(batch["frames"]).float().cpu()  # (B, T, K, C)
            extras = [k for k in CLIP_EXTRAS if k in batch]
            for b in range(len(tokens)):
                clip = {"tokens": tokens[b], "timestamps": batch["timestamps"][b].float()}
                yield clip | {k: batch[k][b].float() for k in extras}

    if is_shard_cache(path):
        path = write_cache_shards(path, encoded(), fingerprint)
    else:
        clips_out = list(encoded())
        stacked = {k: torch.stack([c[k] for c in clips_out]) for k in clips_out[0]}
        path = write_token_cache(path, stacked, fingerprint)
    log.info("wrote token cache %s", path)
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
