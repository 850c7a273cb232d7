"""Training helpers shared by every stage's LightningModule (tokenizer, world model, pixel codec)."""

import hashlib
import json
import logging
import math

import lightning as L
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from deltaworld.tokenizer.checkpoint import atomic_write_text

log = logging.getLogger(__name__)

NO_DECAY_TYPES = (nn.LayerNorm, nn.Embedding, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def param_groups(model: nn.Module) -> list[dict]:
    """Trainable parameters in two optimizer groups: weight matrices take the optimizer's own weight
    decay; norms, biases, embeddings and layer scales are exempt (weight decay 0)."""
    decay, no_decay = [], []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad:
                continue
            exempt = isinstance(module, NO_DECAY_TYPES) or param.ndim < 2
            (no_decay if exempt else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_constant(optimizer: torch.optim.Optimizer, *, warmup_steps: int) -> LambdaLR:
    """Linear warmup from 0 to the base LR over `warmup_steps`, then constant."""
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float
) -> LambdaLR:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_ratio` x the base LR at `total_steps`."""
    if total_steps <= warmup_steps:
        raise ValueError(
            f"a cosine schedule needs total_steps > warmup_steps, got {total_steps} <= {warmup_steps} "
            "(set trainer.max_steps)"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def check_state_dict(module: nn.Module, weights: dict[str, torch.Tensor], *, source: str) -> None:
    """Raise a ValueError naming `source` unless `weights` fits `module` exactly: it lists the missing
    and unexpected keys and the shape mismatches (the first few of each, with counts)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [
        f"{k} {tuple(weights[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    problems = [
        f"{len(items)} {label}: {', '.join(items[:10])}{', ...' if len(items) > 10 else ''}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatches (file != model)", mismatched),
        )
        if items
    ]
    if problems:
        raise ValueError(f"{source} does not fit the {type(module).__name__} of this run: " + "; ".join(problems))


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator that depends only on (seed, step, rank): training randomness that survives resume.

    Global RNG state is not part of a checkpoint; drawing per-step noise from here makes a resumed
    run draw exactly what the uninterrupted run drew.
    """
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    digest = hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def compile_blocks(model: nn.Module, block_type: type[nn.Module]) -> int:
    """Compile every `block_type` submodule in place (state-dict keys unchanged); returns the count."""
    blocks = [m for m in model.modules() if isinstance(m, block_type)]
    for block in blocks:
        block.compile()
    log.info("torch.compile: %d %s modules", len(blocks), block_type.__name__)
    return len(blocks)


def parameter_digest(model: nn.Module) -> str:
    """Content hash of all parameters, for checking that DDP ranks hold identical weights."""
    h = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(param.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class RankSyncCheck(L.Callback):
    """At the end of fit, compares a digest of the weights across ranks and writes them to `path`.

    Diverged DDP replicas (a non-synchronised parameter, rank-dependent code) fail loudly here
    instead of silently producing a checkpoint that only rank 0's weights describe.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = bytes.fromhex(parameter_digest(pl_module))
        local = torch.tensor(list(digest), dtype=torch.int32, device=pl_module.device)
        gathered = trainer.strategy.all_gather(local).reshape(-1, len(digest))  # (world, 32)
        digests = [bytes(row.tolist()).hex() for row in gathered.cpu()]
        if trainer.is_global_zero:
            atomic_write_text(self.path, json.dumps({"digests": digests}, indent=1))
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP ranks ended with different weights: {digests}")
