"""`deltaworld bench codec`: pixel DeltaToken encode/decode frames per second on CPU at the CPU
preset (random init: speed does not depend on the weights), tokens per second of video and the
reduction factors at the CPU preset and at the seed's size."""

import time

import torch
from hydra.utils import instantiate

from deltaworld.eval.configs import compose_config
from deltaworld.tokenizer.pixel import frame_token_counts
from deltaworld.tokenizer.pixel_metrics import token_budget
from deltaworld.tokenizer.streaming import DecoderSession, EncoderSession


def frames_per_second(push, inputs: list[torch.Tensor]) -> float:
    push(inputs[0])  # warm-up (first call allocates)
    start = time.perf_counter()
    for x in inputs[1:]:
        push(x)
    return (len(inputs) - 1) / (time.perf_counter() - start)


def budget_line(name: str, tok: dict, *, height: int, width: int, fps: float, seconds: float) -> str:
    counts = frame_token_counts(round(fps * seconds), tok["num_tokens"], tok["key_tokens"], tok["key_interval"])
    b = token_budget(
        counts, token_dim=tok["token_dim"], height=height, width=width, fps=fps, patch_size=tok["patch_size"]
    )
    return (
        f"  {name}: {height}x{width} @ {fps:g} fps, {seconds:g} s: {b.delta_tokens} tokens x {b.token_dim} ch "
        f"= {b.tokens_per_second:.1f} tokens/s; {b.vs_vae:.1f}x fewer than a VAE grid ({b.vae_tokens}), "
        f"{b.vs_patches:.1f}x fewer than raw patches ({b.patch_tokens})"
    )


def bench_codec(frames: int = 16, threads: int | None = None) -> list[str]:
    cpu = compose_config("train", ["experiment=pixel_cpu", "run_dir=."])
    seed = compose_config("train", ["experiment=pixel_seed", "run_dir=.", "data.root=."])
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = instantiate(cpu.tokenizer).eval()
    size = cpu.frame_size
    video = torch.randint(0, 256, (frames, 1, 3, size, size), dtype=torch.uint8)
    encoder = EncoderSession(model)
    tokens = [encoder.push(x) for x in video]
    lines = [
        f"pixel DeltaToken codec, CPU preset (experiment=pixel_cpu: {size}x{size}, patch {model.patch_size}, "
        f"{model.num_tokens} tokens x {model.token_dim} ch, key frame {model.key_tokens} tokens), "
        f"{torch.get_num_threads()} CPU threads, batch 1, streaming sessions, {frames} frames",
        "",
        "  encode (closed loop: encoder + local decoder): "
        f"{frames_per_second(EncoderSession(model).push, list(video)):8.1f} frames/s",
    ]
    for decoder, steps in (("deterministic", 4), ("diffusion", 4)):
        session = DecoderSession(model, (size, size), decoder=decoder, steps=steps)
        label = decoder + (f" ({steps} flow steps)" if decoder == "diffusion" else "")
        # the decoder session must see frames in order from 0: time all but the first
        lines.append(f"  decode {label:<26}: {frames_per_second(session.push, tokens):8.1f} frames/s")
    lines += ["", "token budget (key frames included):"]
    lines.append(budget_line("CPU preset", cpu.tokenizer, height=size, width=size, fps=10, seconds=5))
    src = seed.data.source
    lines.append(budget_line("seed preset", seed.tokenizer, height=src.height, width=src.width, fps=24, seconds=5))
    return lines
