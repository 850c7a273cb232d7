"""The device a command runs on, from its `device` option."""

import torch


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when available, else CPU; any other name as torch spells it (cpu, cuda, cuda:1)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
