"""Speed and memory benchmarks that print figures (never asserted by tests).

Each measured setting runs in a fresh spawned process, so its peak resident memory is its own.
"""

import multiprocessing as mp
import resource
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    seconds: float  # median wall time of one call
    peak_mb: float  # peak memory: CUDA allocator on GPU, process max RSS on CPU


def time_calls(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def in_fresh_process(fn: Callable, *args) -> Timing:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def tokenizer_train_step(setting: dict, precision: str) -> Timing:
    """One DeltaTok optimizer step on random frames at `setting` (backbone + tokenizer sizes)."""
    from tokenizer.backbone import build_backbone
    from tokenizer.deltatok import DeltaTok
    from tokenizer.losses import log_cosh

    torch.set_num_threads(setting.get("threads", torch.get_num_threads()))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_backbone(name=setting["backbone"], img_size=setting["size"], arch=setting.get("arch")).to(device)
    tok = DeltaTok(dim=backbone.dim, num_heads=backbone.num_heads, depth=setting["depth"]).to(device)
    opt = torch.optim.AdamW(tok.parameters(), lr=1e-4)
    size, batch = setting["size"], setting["batch"]
    frames = torch.randint(0, 256, (batch, 2, 3, size, size), dtype=torch.uint8, device=device)
    grid = backbone.grid(size, size)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
            feats = backbone(frames)
            prev, cur = feats[:, 0], feats[:, 1]
            loss = log_cosh(tok.decode(tok.encode(prev, cur, grid), prev, grid).float(), cur.float()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = time_calls(step, warmup=1, repeats=setting.get("repeats", 3))
    return Timing(seconds, peak_memory_mb(device))


TOKENIZER_SETTINGS = {
    "cpu_demo (tiny ViT, 112 px, depth 2)": {
        "backbone": "vit_small_patch14_dinov2", "size": 112, "depth": 2, "batch": 24,
        "arch": {"depth": 2, "embed_dim": 64, "num_heads": 4},
    },
    "ViT-S/14 224 px, DeltaTok depth 12": {
        "backbone": "vit_small_patch14_dinov2", "size": 224, "depth": 12, "batch": 8, "repeats": 2,
    },
}


def bench_tokenizer(settings: dict[str, dict] | None = None) -> list[str]:
    lines = ["DeltaTok train step (AdamW, frame pairs; median of repeats; each in a fresh process)", ""]
    lines.append(f"{'setting':<40} {'precision':<9} {'step s':>8} {'pairs/s':>8} {'peak MB':>9} {'bf16 speed-up':>14}")
    for name, setting in (settings or TOKENIZER_SETTINGS).items():
        fp32 = in_fresh_process(tokenizer_train_step, setting, "fp32")
        bf16 = in_fresh_process(tokenizer_train_step, setting, "bf16")
        for precision, t in (("fp32", fp32), ("bf16", bf16)):
            speedup = f"{fp32.seconds / bf16.seconds:.2f}x" if precision == "bf16" else ""
            lines.append(
                f"{name:<40} {precision:<9} {t.seconds:>8.3f} {setting['batch'] / t.seconds:>8.1f} {t.peak_mb:>9.0f} {speedup:>14}"
            )
    lines += ["", "tokens per frame vs patch tokens (K=1 DeltaTok token per frame):"]
    for size, patch in ((224, 14), (448, 14), (512, 16)):
        patches = (size // patch) ** 2
        lines.append(f"  {size} px, patch {patch}: {patches} patch tokens -> 1 delta token ({patches}x fewer)")
    return lines
