"""A run folder holds one run: a lock against a second process, a config check before anything is
written, stale temporary files cleaned, and the newest checkpoint that loads for `resume=auto`.

The lock is an advisory `flock` on `<run_dir>/.lock`: the kernel releases it when the holder
exits, however it exits (kill -9 included), so a crash never leaves a folder locked.
"""

import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch

LOCK_FILE = ".lock"
CONFIG_FILE = "config.yaml"
# keys a continued run may change: how long and where it runs and how it logs, not what it trains
MAY_DIFFER = (
    "resume",
    "run_dir",
    "trainer.max_steps",
    "trainer.devices",
    "trainer.num_nodes",
    "data.num_workers",
    "logger.",
    "callbacks.progress_bar",
)


class RunFolderError(RuntimeError):
    """The run folder belongs to another process or another experiment."""


class RunFolderLock:
    """Exclusive hold on a run folder for the life of this object (or of the process)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOCK_FILE
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise RunFolderError(
                f"{self.run_dir} is in use by another training process (pid {holder}); wait for it to "
                "finish or give another run_dir="
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: dotted keys, as overrides name them."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        out |= flatten(value, f"{name}.") if isinstance(value, dict) and value else {name: value}
    return out


def config_differences(stored: dict, current: dict) -> list[str]:
    """The dotted keys whose values differ between a folder's config and this run's, as
    "key: stored -> current" lines (keys in MAY_DIFFER excepted)."""
    old, new = flatten(stored), flatten(current)
    lines = []
    for key in sorted(old.keys() | new.keys()):
        if key.startswith(MAY_DIFFER) or old.get(key, "<absent>") == new.get(key, "<absent>"):
            continue
        lines.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return lines


def check_config(run_dir: str | os.PathLike, current: dict, stored: dict | None) -> None:
    """Refuse to continue `run_dir` with a config other than the one it was started with."""
    if stored is None:
        return
    if differences := config_differences(stored, current):
        shown = "\n  ".join(differences[:12]) + ("\n  ..." if len(differences) > 12 else "")
        raise RunFolderError(
            f"{Path(run_dir) / CONFIG_FILE} belongs to another experiment; this run differs in:\n  {shown}\n"
            "give another run_dir= (or restore those settings to continue that run)"
        )


def clean_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files an interrupted atomic write left (`.<name>.<random>.tmp`); only
    safe while holding the folder's lock, since no other writer can then be mid-write."""
    stale = [p for p in Path(run_dir).rglob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _checkpoints_newest_first(folder: Path) -> Iterator[Path]:
    last = folder / "last.ckpt"
    if last.is_file():
        yield last

    def step(path: Path) -> int:
        match = re.search(r"(\d+)", path.stem)
        return int(match.group(1)) if match else -1

    yield from sorted(
        (p for p in folder.glob("*.ckpt") if p != last), key=lambda p: (step(p), p.stat().st_mtime), reverse=True
    )


def loads(path: Path) -> bool:
    """Whether a checkpoint reads back whole (zip directory, every record, the training state)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any failure to read means: not this one
        return False
    return isinstance(state, dict) and "state_dict" in state and "global_step" in state


def newest_loadable_checkpoint(folder: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """(the newest checkpoint under `folder` that loads, the newer ones that did not): `last.ckpt`
    first, then step checkpoints by step."""
    folder, damaged = Path(folder), []
    if not folder.is_dir():
        return None, damaged
    for path in _checkpoints_newest_first(folder):
        if loads(path):
            return path, damaged
        damaged.append(path)
    return None, damaged
