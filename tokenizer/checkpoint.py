"""Checkpoint IO: atomic writes, `weights_only` loading, safetensors export."""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes
from torch import nn


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on success it is flushed, fsynced and
    renamed over `path`, so a reader (or a crash) sees the old file or the new one, never a
    truncated one. On an error the temporary file is removed and `path` is left as it was.
    Every writer of the framework (checkpoints, exports, shards, caches, manifests) goes through here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk or a vanished folder: say which file could not be written
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, f"could not write {path}: {e.strerror or e}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` for a text file (configs, JSON, manifests, reports)."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """`atomic_write` for a safetensors file (metadata values are strings, as the format requires)."""
    payload = save_safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    with atomic_write(path) as f:
        f.write(payload)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`atomic_write` for `torch.save` (Lightning checkpoints)."""
    with atomic_write(path) as f:
        torch.save(obj, f)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO with atomic writes and `weights_only=True` reads."""

    def save_checkpoint(self, checkpoint: dict, path: str, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: str, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def export_safetensors(module: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save a module's state dict as safetensors (atomically); `metadata` is stored as JSON strings."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_save_safetensors(module.state_dict(), path, meta)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """State dict from a .safetensors file or a Lightning/torch checkpoint (read with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with unreadable_as_value_error(path):
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj.get("state_dict", obj) if isinstance(obj, dict) else obj


@contextmanager
def unreadable_as_value_error(path: str | os.PathLike) -> Iterator[None]:
    """A file that does not deserialise (empty, truncated, another format) as one ValueError naming
    it; the readers raise a different error type for each way a file can be damaged."""
    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as e:
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        raise ValueError(
            f"{path} ({size} bytes) does not read as a model file: it is empty, truncated or of another format "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from e


def checkpoint_keys(path: str | os.PathLike) -> list[str]:
    """The state-dict keys of a checkpoint file without reading its tensors (memory-mapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files from torch.save before 1.6 cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return list(obj.get("state_dict", obj)) if isinstance(obj, dict) else []


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of a safetensors file (data only: `tokenizer.schema` says what may build from it)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with unreadable_as_value_error(path), safe_open(str(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def strip_prefix(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix` with the prefix removed."""
    return {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}


def load_tokenizer(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """Frozen (backbone, DeltaTok) from a file written by `deltaworld train`: a tokenizer export, or a
    world-model export (which carries its tokenizer under `deltatok.`). The configs are embedded, and
    checked against the builders of `tokenizer.schema` before anything is built."""
    # imported here: the schema imports the models, whose modules import this one
    from deltaworld.tokenizer.schema import BACKBONE, DELTATOK, checked_config, checked_field, expect_kind

    meta = read_metadata(path)
    kind = expect_kind(path, meta, ("tokenizer", "world"), "deltaworld train experiment=cpu_demo")
    checked_field(path, meta, "frame_size", int)  # the size its users resize frames to
    backbone_args = checked_config(path, meta, "backbone", BACKBONE)
    deltatok_args = checked_config(path, meta, "tokenizer", DELTATOK)
    backbone = BACKBONE.fn(**backbone_args)
    deltatok = DELTATOK.fn(**deltatok_args, dim=backbone.dim, num_heads=backbone.num_heads)
    weights = load_weights(path)
    deltatok.load_state_dict(strip_prefix(weights, "deltatok.") if kind == "world" else weights)
    deltatok.requires_grad_(False).eval()
    return backbone.to(device), deltatok.to(device)
