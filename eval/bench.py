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
    from deltaworld.tokenizer.backbone import build_backbone
    from deltaworld.tokenizer.deltatok import DeltaTok
    from deltaworld.tokenizer.losses import log_cosh

    torch.set_num_threads(setting.get("threads", torch.get_num_threads()))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_backbone(name=setting["backbone"], img_size=setting["size"], arch=setting.get("arch")).to(
            device
        )
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
        "backbone": "vit_small_patch14_dinov2",
        "size": 112,
        "depth": 2,
        "batch": 24,
        "arch": {"depth": 2, "embed_dim": 64, "num_heads": 4},
    },
    "ViT-S/14 224 px, DeltaTok depth 12": {
        "backbone": "vit_small_patch14_dinov2",
        "size": 224,
        "depth": 12,
        "batch": 8,
        "repeats": 2,
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
                f"{name:<40} {precision:<9} {t.seconds:>8.3f} {setting['batch'] / t.seconds:>8.1f} "
                f"{t.peak_mb:>9.0f} {speedup:>14}"
            )
    lines += ["", "tokens per frame vs patch tokens (K=1 DeltaTok token per frame):"]
    for size, patch in ((224, 14), (448, 14), (512, 16)):
        patches = (size // patch) ** 2
        lines.append(f"  {size} px, patch {patch}: {patches} patch tokens -> 1 delta token ({patches}x fewer)")
    return lines


WORLD_SETTING = {  # CPU-sized: the paper's ViT-B predictor is too slow for 2 cores at N=256
    "backbone": "vit_small_patch14_dinov2",
    "size": 112,
    "arch": {"depth": 2, "embed_dim": 64, "num_heads": 4},
    "tokenizer_depth": 2,
    "world": {"dim": 128, "depth": 4, "num_heads": 4, "rope_dim": 28},
    "batch": 8,
    "frames": 8,
    "threads": 2,
}


def _tiny_world_stack(setting: dict):
    from deltaworld.tokenizer.backbone import build_backbone
    from deltaworld.tokenizer.deltatok import DeltaTok
    from deltaworld.worldmodel.deltaworld import DeltaWorld

    torch.set_num_threads(setting["threads"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_backbone(name=setting["backbone"], img_size=setting["size"], arch=setting["arch"])
    deltatok = DeltaTok(
        dim=backbone.dim, num_heads=backbone.num_heads, depth=setting["tokenizer_depth"]
    ).requires_grad_(False)
    world = DeltaWorld(token_dim=backbone.dim, **setting["world"])
    return backbone, deltatok, world


def world_train_step(setting: dict, num_hypotheses: int, cached: bool) -> Timing:
    """One best-of-N optimizer step over clips of T frames; tokens precomputed (a token cache) or
    computed from frames by the frozen backbone + DeltaTok."""
    from deltaworld.tokenizer.losses import feature_loss

    backbone, deltatok, world = _tiny_world_stack(setting)
    b, t, size = setting["batch"], setting["frames"], setting["size"]
    frames = torch.randint(0, 256, (b, t, 3, size, size), dtype=torch.uint8)
    times = torch.cumsum(torch.rand(b, t) * 0.3 + 0.04, 1)
    grid, black = backbone.grid(size, size), backbone.black_features(size, size)

    def tokens_from_frames() -> torch.Tensor:
        with torch.no_grad():
            return deltatok.tokenize(backbone(frames), grid, black)

    cache = tokens_from_frames()
    opt = torch.optim.AdamW(world.parameters(), lr=1e-4)
    loss_fn = feature_loss("smooth_l1", beta=0.1)

    def step() -> None:
        tokens = cache if cached else tokens_from_frames()
        loss, _ = world.teacher_forced_loss(tokens, times, num_hypotheses=num_hypotheses, loss_fn=loss_fn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return Timing(time_calls(step, warmup=2, repeats=5), peak_memory_mb(torch.device("cpu")))


def world_rollout_step(setting: dict, context: int, samples: int, use_cache: bool) -> Timing:
    """Seconds per predicted step of an M-sample rollout of 4 steps after `context` frames."""
    _, _, world = _tiny_world_stack(setting)
    b, horizon = 2, 4
    tokens = torch.randn(b, context, 1, world.token_dim)
    times = torch.arange(context + horizon).float().expand(b, -1) * 0.2

    def rollout() -> None:
        world.rollout(tokens, times[:, :context], times[:, context:], samples=samples, use_cache=use_cache)

    return Timing(time_calls(rollout, warmup=1, repeats=3) / horizon, peak_memory_mb(torch.device("cpu")))


def flops_per_predicted_frame(
    *, dim: int, depth: int, num_heads: int, feature_dim: int, context: int, tokens_per_frame: int
) -> int:
    """Forward FLOPs to predict one frame (one hypothesis) after `context` frames, K tokens per frame."""
    from torch.utils.flop_counter import FlopCounterMode

    from deltaworld.worldmodel.deltaworld import DeltaWorld

    k = tokens_per_frame
    world = DeltaWorld(
        token_dim=feature_dim,
        tokens_per_frame=k,
        dim=dim,
        depth=depth,
        num_heads=num_heads,
        rope_dim=dim // num_heads - 4,
    )
    tokens = torch.randn(1, context, k, feature_dim)
    times = torch.arange(context + 1).float()[None] * 0.2
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        world.rollout(tokens, times[:, :context], times[:, context:], samples=1, use_cache=False)
    return counter.get_total_flops()


def bench_world(setting: dict | None = None) -> list[str]:
    setting = setting or WORLD_SETTING
    w = setting["world"]
    lines = [
        f"DeltaWorld benchmarks (CPU, {setting['threads']} threads; predictor width {w['dim']}, depth {w['depth']}; "
        f"tiny ViT at {setting['size']} px; batch {setting['batch']} clips x {setting['frames']} frames; "
        "median of 5 train steps, 3 rollouts; fresh process each)",
        "",
        "train step (best-of-N: N hypotheses scored without gradient, the best re-run with gradient)",
        f"{'N':>5} {'tokens':<10} {'step s':>8} {'vs N=1':>7} {'peak MB':>8} {'on-the-fly / cache':>19}",
    ]
    base = None
    for n in (1, 16, 256):
        cached = in_fresh_process(world_train_step, setting, n, True)
        live = in_fresh_process(world_train_step, setting, n, False)
        base = base or cached.seconds
        lines.append(
            f"{n:>5} {'cache':<10} {cached.seconds:>8.3f} {cached.seconds / base:>6.2f}x {cached.peak_mb:>8.0f}"
        )
        lines.append(
            f"{n:>5} {'on-the-fly':<10} {live.seconds:>8.3f} {live.seconds / base:>6.2f}x {live.peak_mb:>8.0f} "
            f"{live.seconds / cached.seconds:>18.2f}x"
        )
    lines += [
        "",
        "rollout, M=20 hypotheses in one batched forward per step (2 clips, 4 steps)",
        f"{'context':>8} {'KV cache':<9} {'s / step':>9} {'uncached / cached':>18}",
    ]
    for context in (4, 64):
        cached = in_fresh_process(world_rollout_step, setting, context, 20, True)
        uncached = in_fresh_process(world_rollout_step, setting, context, 20, False)
        lines.append(f"{context:>8} {'yes':<9} {cached.seconds:>9.4f}")
        lines.append(f"{context:>8} {'no':<9} {uncached.seconds:>9.4f} {uncached.seconds / cached.seconds:>17.2f}x")
    lines += [
        "",
        "FLOPs per predicted frame, paper-sized predictor (width 768, 12 layers), 4 context frames, "
        "ViT-B features (D=768)",
    ]
    for size, patch in ((224, 14), (512, 16)):
        patches = (size // patch) ** 2
        kw = dict(dim=768, depth=12, num_heads=12, feature_dim=768, context=4)
        delta = flops_per_predicted_frame(**kw, tokens_per_frame=1)
        patch_tokens = flops_per_predicted_frame(**kw, tokens_per_frame=patches)
        lines.append(
            f"  {size} px / patch {patch} ({patches} patches): DeltaWorld {delta / 1e9:.3f} GFLOPs, "
            f"patch-token world model {patch_tokens / 1e9:.1f} GFLOPs ({patch_tokens / delta:.0f}x)"
        )
    return lines
