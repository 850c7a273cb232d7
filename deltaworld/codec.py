"""`deltaworld codec encode|decode|eval`: the pixel DeltaToken as a streaming video codec.

  deltaworld codec encode in.mp4 out.dtok ckpt=<tokenizer.safetensors> [size=64] [max_frames=N]
  deltaworld codec decode out.dtok out.mp4 [decoder=deterministic|diffusion] [steps=4] [seed=0] [ckpt=...]
  deltaworld codec eval ckpt=<tokenizer.safetensors> [video=in.mp4] [clips=4] [frames=16] [out_dir=DIR]

A token file is safetensors: `tokens` (L, C), the 1D sequence of all frames, with the checkpoint,
frame size, frame rate and source video recorded in its metadata. Both directions print PSNR/SSIM
of the round trip, tokens per second of video and the reduction factors.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from deltaworld.data.sources import SyntheticSource, resize_center_crop
from deltaworld.data.stream import EVAL_STREAM, draw_clip
from deltaworld.data.video import decode_frames, probe_video, write_video
from deltaworld.eval.codec import codec_records, evaluate_codec, psnr_over_time_figure, reconstruction_figure
from deltaworld.eval.records import metrics_table, write_metrics
from deltaworld.tokenizer.pixel import PixelDeltaToken, load_pixel_tokenizer, to_uint8, to_unit
from deltaworld.tokenizer.pixel_metrics import psnr_per_frame, ssim_per_frame, token_budget
from deltaworld.tokenizer.streaming import DecoderSession, EncoderSession

USAGE = __doc__.split("\n\n")[1]


def parse(args: list[str], positional: int) -> tuple[list[str], dict[str, str]]:
    pos = [a for a in args if "=" not in a]
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    if len(pos) != positional:
        raise SystemExit(f"expected {positional} file arguments, got {pos}\n\n{USAGE}")
    return pos, opts


def read_video(path: str, size: int, max_frames: int | None) -> tuple[torch.Tensor, float]:
    """All frames (up to max_frames) as uint8 (T, 3, size, size), centre-cropped and resized, and fps."""
    info = probe_video(path)
    count = info.num_frames if max_frames is None else min(info.num_frames, max_frames)
    frames, _ = decode_frames(path, np.arange(count) / info.fps)
    return resize_center_crop(frames, size, size), info.fps


def summary(model: PixelDeltaToken, frames: torch.Tensor, decoded: torch.Tensor | None, fps: float) -> list[str]:
    """PSNR/SSIM of decoded vs frames (uint8 (T, 3, H, W)) when both are known, and token figures."""
    t, _, h, w = frames.shape
    lines = []
    if decoded is not None:
        x, y = to_unit(frames), to_unit(decoded)
        lines.append(f"PSNR {psnr_per_frame(y, x).mean():.2f} dB   SSIM {ssim_per_frame(y, x).mean():.4f}   ({t} frames, {h}x{w})")
    b = token_budget(model.token_counts(t), token_dim=model.token_dim, height=h, width=w, fps=fps, patch_size=model.patch_size)
    lines += [
        f"tokens: {b.delta_tokens} x {b.token_dim} channels for {b.seconds:.2f} s = {b.tokens_per_second:.1f} tokens/s of video",
        f"reduction vs VAE latent grid (8x spatial, 4x temporal, 16 ch): {b.vae_tokens} -> {b.delta_tokens} tokens ({b.vs_vae:.1f}x)",
        f"reduction vs raw {model.patch_size}x{model.patch_size} patches: {b.patch_tokens} -> {b.delta_tokens} tokens ({b.vs_patches:.1f}x)",
    ]
    return lines


@torch.no_grad()
def encode(args: list[str]) -> None:
    (src, dst), opts = parse(args, 2)
    if "ckpt" not in opts:
        raise SystemExit(f"encode needs ckpt=<tokenizer.safetensors>\n\n{USAGE}")
    model, meta = load_pixel_tokenizer(opts["ckpt"])
    size = int(opts.get("size", meta["frame_size"]))
    frames, fps = read_video(src, size, int(opts["max_frames"]) if "max_frames" in opts else None)
    session, tokens, recon = EncoderSession(model), [], []
    for frame in tqdm(frames, desc="encode", unit="frame"):
        tokens.append(session.push(frame[None])[0])
        recon.append(to_uint8(session.reconstruction[0]))
    metadata = {
        "ckpt": str(Path(opts["ckpt"]).resolve()), "source": str(Path(src).resolve()), "fps": fps,
        "height": size, "width": size, "num_frames": len(frames),
    }
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    save_file({"tokens": torch.cat(tokens).contiguous()}, dst, metadata={k: json.dumps(v) for k, v in metadata.items()})
    print(f"wrote {dst} ({Path(dst).stat().st_size} bytes); deterministic round trip:")
    print("\n".join(summary(model, frames, torch.stack(recon), fps)))


@torch.no_grad()
def decode(args: list[str]) -> None:
    (src, dst), opts = parse(args, 2)
    with safe_open(src, framework="pt") as f:
        tokens = f.get_tensor("tokens")  # (L, C)
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    model, _ = load_pixel_tokenizer(opts.get("ckpt", meta["ckpt"]))
    decoder = opts.get("decoder", "deterministic")
    session = DecoderSession(
        model, (meta["height"], meta["width"]), decoder=decoder, steps=int(opts.get("steps", 4)), seed=int(opts.get("seed", 0))
    )
    per_frame = model.split_tokens(tokens[None].float())  # one (1, K_t, C) per frame
    frames = [to_uint8(session.push(tok)[0]) for tok in tqdm(per_frame, desc=f"decode ({decoder})", unit="frame")]
    decoded = torch.stack(frames)
    write_video(dst, decoded, meta["fps"])
    reference = opts.get("reference", meta["source"])
    original = read_video(reference, meta["height"], meta["num_frames"])[0] if Path(reference).is_file() else None
    print(f"wrote {dst}: {len(frames)} frames, {decoder} decoder" + ("" if original is not None else f" (no reference video at {reference}: no PSNR)"))
    print("\n".join(summary(model, original if original is not None else decoded, decoded if original is not None else None, meta["fps"])))


@torch.no_grad()
def evaluate(args: list[str]) -> None:
    _, opts = parse(args, 0)
    if "ckpt" not in opts:
        raise SystemExit(f"eval needs ckpt=<tokenizer.safetensors>\n\n{USAGE}")
    model, meta = load_pixel_tokenizer(opts["ckpt"])
    size, num_frames = int(opts.get("size", meta["frame_size"])), int(opts.get("frames", 16))
    if "video" in opts:
        frames, fps = read_video(opts["video"], size, num_frames)
        clips, dataset = frames[None], Path(opts["video"]).name
    else:
        fps = float(opts.get("fps", 10.0))
        source = SyntheticSource(num_frames=num_frames, height=size, width=size, min_gap=1 / fps, max_gap=1 / fps)
        clips = torch.stack([draw_clip(source, 0, i, stream=EVAL_STREAM)[0]["frames"] for i in range(int(opts.get("clips", 4)))])
        dataset = "synthetic"
    out = Path(opts.get("out_dir", "outputs/codec_eval"))
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_codec(model, clips, steps=int(opts.get("steps", 4)), seed=int(opts.get("seed", 0)))
    records = codec_records(result, dataset)
    write_metrics(records, out / "metrics.json")
    reconstruction_figure(result, out / "reconstructions.png")
    psnr_over_time_figure(result, out / "psnr_over_time.png")
    print(metrics_table([r for r in records if r.horizon == -1], lower_is_better=()))
    print("\n".join(summary(model, clips[0], None, fps)))
    print(f"wrote {out}/metrics.json, reconstructions.png, psnr_over_time.png")


COMMANDS = {"encode": encode, "decode": decode, "eval": evaluate}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    main()
