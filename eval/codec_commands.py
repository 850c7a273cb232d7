"""The pixel DeltaToken as a streaming video codec on files (`deltaworld codec`): encode a video
into a token file, decode a token file into a video, evaluate a checkpoint on clips.

A token file is safetensors: `tokens` (L, C), the 1D sequence of all frames, with the checkpoint,
frame size, frame rate and source video recorded in its metadata. Encode and decode print PSNR/SSIM
of the round trip, tokens per second of video and the reduction factors.
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from safetensors import safe_open
from tqdm import tqdm

from deltaworld.data.clips import resize
from deltaworld.data.sources import SyntheticSource
from deltaworld.data.stream import EVAL_STREAM, draw_clip
from deltaworld.data.video import VideoDecodeError, iter_frames, probe_video, write_video
from deltaworld.eval.codec import (
    codec_records,
    evaluate_codec,
    psnr_over_time_figure,
    reconstruction_figure,
)
from deltaworld.eval.records import metrics_table, write_metrics
from deltaworld.tokenizer.checkpoint import atomic_save_safetensors
from deltaworld.tokenizer.pixel import PixelDeltaToken, load_pixel_tokenizer, to_uint8, to_unit
from deltaworld.tokenizer.pixel_metrics import psnr_per_frame, ssim_per_frame, token_budget
from deltaworld.tokenizer.schema import checked_field
from deltaworld.tokenizer.streaming import DecoderSession, EncoderSession

TOKEN_FILE_KIND, TOKEN_FILE_VERSION = "pixel_tokens", 1


def coded_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The size a (height, width) video is coded at: short side `short_side`, aspect kept, the long
    side rounded to an even number of pixels (video files store yuv420p)."""
    if short_side < 2 or short_side % 2:
        raise ValueError(f"size={short_side}: the short side must be an even number of pixels")
    scale = short_side / min(height, width)
    long_side = max(2, 2 * round(max(height, width) * scale / 2))
    return (short_side, long_side) if height <= width else (long_side, short_side)


def padding(height: int, width: int, patch: int) -> tuple[int, int]:
    """(bottom, right) pixels that make a frame a whole number of patches."""
    return -height % patch, -width % patch


def read_video(path: str | Path, short_side: int, max_frames: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Every decoded frame of `path` (up to max_frames), in order, resized to `coded_size`: uint8
    (T, 3, h, w), their true presentation times (T,) in seconds, and the mean frame rate."""
    frames, times = [], []
    for t, image in iter_frames(path):
        frame = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, 3, H, W)
        frames.append(resize(frame, *coded_size(*frame.shape[-2:], short_side))[0])
        times.append(t)
        if len(frames) == max_frames:
            break
    if not frames:
        raise VideoDecodeError(f"{path}: no decodable frames")
    times = torch.tensor(times, dtype=torch.float64)
    fps = (
        (len(times) - 1) / float(times[-1] - times[0])
        if len(times) > 1 and times[-1] > times[0]
        else probe_video(path).fps
    )
    return torch.stack(frames), times, fps


def padded(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """uint8 (T, 3, h, w) -> float (T, 3, h + pb, w + pr) in [-1, 1], edge pixels repeated."""
    bottom, right = padding(*frames.shape[-2:], patch)
    return F.pad(to_unit(frames), (0, right, 0, bottom), mode="replicate")


def summary(model: PixelDeltaToken, frames: torch.Tensor, decoded: torch.Tensor | None, fps: float) -> list[str]:
    """PSNR/SSIM of decoded vs frames (uint8 (T, 3, H, W)) when both are known, and token figures."""
    t, _, h, w = frames.shape
    lines = []
    if decoded is not None:
        x, y = to_unit(frames), to_unit(decoded)
        psnr, ssim = psnr_per_frame(y, x).mean(), ssim_per_frame(y, x).mean()
        lines.append(f"PSNR {psnr:.2f} dB   SSIM {ssim:.4f}   ({t} frames, {h}x{w})")
    b = token_budget(
        model.token_counts(t), token_dim=model.token_dim, height=h, width=w, fps=fps, patch_size=model.patch_size
    )
    p = model.patch_size
    lines += [
        f"tokens: {b.delta_tokens} x {b.token_dim} channels for {b.seconds:.2f} s "
        f"= {b.tokens_per_second:.1f} tokens/s of video",
        f"reduction vs VAE latent grid (8x spatial, 4x temporal, 16 ch): {b.vae_tokens} -> {b.delta_tokens} tokens "
        f"({b.vs_vae:.1f}x)",
        f"reduction vs raw {p}x{p} patches: {b.patch_tokens} -> {b.delta_tokens} tokens ({b.vs_patches:.1f}x)",
    ]
    return lines


@torch.no_grad()
def encode_file(
    src: str | Path, dst: str | Path, *, ckpt: str | Path, size: int | None = None, max_frames: int | None = None
) -> Path:
    """Video `src` -> token file `dst`: every decoded frame, in order, with its true timestamp,
    resized to short side `size` (aspect kept) and padded to whole patches, through an encoder
    session; prints the deterministic round trip's quality and the token figures."""
    model, meta = load_pixel_tokenizer(ckpt)
    frames, times, fps = read_video(src, size or meta["frame_size"], max_frames)
    info = probe_video(src)
    (height, width), (source_height, source_width) = frames.shape[-2:], (info.height, info.width)
    bottom, right = padding(height, width, model.patch_size)
    session, tokens, recon = EncoderSession(model), [], []
    for frame in tqdm(padded(frames, model.patch_size), desc="encode", unit="frame"):
        tokens.append(session.push(frame[None])[0])
        recon.append(to_uint8(session.reconstruction[0, :, :height, :width]))
    metadata = {
        "kind": TOKEN_FILE_KIND,
        "format_version": TOKEN_FILE_VERSION,
        "ckpt": str(Path(ckpt).resolve()),
        "source": str(Path(src).resolve()),
        "fps": fps,
        "height": height,
        "width": width,
        "num_frames": len(frames),
        "pad": [bottom, right],
        "geometry": f"every frame of the {source_width}x{source_height} source resized to {width}x{height} (aspect "
        f"kept), padded by {right} px right and {bottom} px bottom (edge pixels) to whole patches; decode crops it",
    }
    written = atomic_save_safetensors(
        {"tokens": torch.cat(tokens), "timestamps": times}, dst, {k: json.dumps(v) for k, v in metadata.items()}
    )
    print(f"wrote {dst} ({written.stat().st_size} bytes): {metadata['geometry']}; deterministic round trip:")
    print("\n".join(summary(model, frames, torch.stack(recon), fps)))
    return written


def read_token_file(path: str | Path) -> tuple[torch.Tensor, dict]:
    """(tokens (L, C), metadata) of a token file `encode_file` wrote (or one of the earlier square
    format, without a kind), each value checked; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tokens = f.get_tensor("tokens") if "tokens" in f.keys() else None
    except Exception as e:  # safetensors and json raise several types for a damaged header
        raise ValueError(f"{path} is not a readable token file (truncated or another format: {e})") from None
    if meta.get("kind", TOKEN_FILE_KIND) != TOKEN_FILE_KIND or meta.get("format_version", 0) not in (0, 1):
        raise ValueError(
            f"{path} is a {meta.get('kind')!r} file (version {meta.get('format_version')}), not a "
            f"token file of `deltaworld codec encode`"
        )
    for key, hint in {"ckpt": str, "source": str, "fps": float, "height": int, "width": int, "num_frames": int}.items():
        checked_field(path, meta, key, hint)  # the exports' schema check: missing or mistyped fields named
    meta.setdefault("pad", [0, 0])
    if tokens is None or tokens.ndim != 2:
        raise ValueError(f"{path}: no (L, C) `tokens` tensor")
    if not torch.isfinite(tokens).all():
        raise ValueError(f"{path}: tokens hold NaN or infinite values (a damaged file)")
    return tokens, meta


@torch.no_grad()
def decode_file(
    src: str | Path,
    dst: str | Path,
    *,
    ckpt: str | Path | None = None,
    decoder: str = "deterministic",
    steps: int = 4,
    seed: int = 0,
    reference: str | Path | None = None,
) -> Path:
    """Token file `src` -> video `dst` with the `decoder` of `ckpt` (default: the checkpoint the file
    records); prints PSNR/SSIM against `reference` (default: the recorded source video) if it exists.
    Everything is checked, and every frame decoded, before the video is written."""
    tokens, meta = read_token_file(src)
    model, _ = load_pixel_tokenizer(ckpt or meta["ckpt"])
    height, width = meta["height"], meta["width"]
    full = (height + meta["pad"][0], width + meta["pad"][1])
    model.grid(*full)  # a size the patches do not divide is refused here
    if tokens.shape[1] != model.token_dim:
        raise ValueError(f"{src}: tokens have {tokens.shape[1]} channels, the tokenizer {model.token_dim}")
    if (expected := sum(model.token_counts(meta["num_frames"]))) != tokens.shape[0]:
        raise ValueError(f"{src}: {tokens.shape[0]} tokens, but {meta['num_frames']} frames take {expected}")
    session = DecoderSession(model, full, decoder=decoder, steps=steps, seed=seed)
    per_frame = model.split_tokens(tokens[None].float())  # one (1, K_t, C) per frame
    decoded = torch.stack(
        [
            to_uint8(session.push(tok)[0, :, :height, :width])
            for tok in tqdm(per_frame, desc=f"decode ({decoder})", unit="frame")
        ]
    )
    write_video(dst, decoded, meta["fps"])
    reference = Path(reference or meta["source"])
    original = read_video(reference, min(height, width), meta["num_frames"])[0] if reference.is_file() else None
    if original is not None and original.shape != decoded.shape:
        original = None  # another video than the one encoded
    note = "" if original is not None else f" (no matching reference video at {reference}: no PSNR)"
    print(f"wrote {dst}: {len(decoded)} frames of {width}x{height}, {decoder} decoder{note}")
    frames_and_decoded = (decoded, None) if original is None else (original, decoded)
    print("\n".join(summary(model, *frames_and_decoded, meta["fps"])))
    return Path(dst)


@torch.no_grad()
def evaluate_checkpoint(
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    video: str | Path | None = None,
    size: int | None = None,
    frames: int = 16,
    clips: int = 4,
    fps: float = 10.0,
    steps: int = 4,
    seed: int = 0,
) -> Path:
    """Per-frame PSNR/SSIM of both decoders and copy-last on the first `frames` frames of `video`, or
    on `clips` synthetic clips at `fps`: metrics.json, reconstructions.png, psnr_over_time.png."""
    model, meta = load_pixel_tokenizer(ckpt)
    size = size or meta["frame_size"]
    if video is not None:
        clip, _, fps = read_video(video, size, frames)
        patch = model.patch_size
        clip = clip[..., : clip.shape[-2] // patch * patch, : clip.shape[-1] // patch * patch]  # whole patches
        batch, dataset = clip[None], Path(video).name
    else:
        source = SyntheticSource(num_frames=frames, height=size, width=size, min_gap=1 / fps, max_gap=1 / fps)
        batch = torch.stack([draw_clip(source, 0, i, stream=EVAL_STREAM)[0]["frames"] for i in range(clips)])
        dataset = "synthetic"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_codec(model, batch, steps=steps, seed=seed)
    records = codec_records(result, dataset)
    write_metrics(records, out / "metrics.json")
    reconstruction_figure(result, out / "reconstructions.png")
    psnr_over_time_figure(result, out / "psnr_over_time.png")
    print(metrics_table([r for r in records if r.horizon == -1], lower_is_better=()))
    print("\n".join(summary(model, batch[0], None, fps)))
    print(f"wrote {out}/metrics.json, reconstructions.png, psnr_over_time.png")
    return out


def require(cfg: DictConfig, *keys: str) -> None:
    if missing := [k for k in keys if cfg[k] is None]:
        raise ValueError(f"deltaworld codec action={cfg.action} needs {' '.join(f'{k}=' for k in missing)}")


def run_codec(cfg: DictConfig) -> Path:
    """`deltaworld codec` (conf/codec.yaml): the `action` on the files the config names."""
    if cfg.action == "encode":
        require(cfg, "input", "output", "ckpt")
        return encode_file(cfg.input, cfg.output, ckpt=cfg.ckpt, size=cfg.size, max_frames=cfg.max_frames)
    if cfg.action == "decode":
        require(cfg, "input", "output")
        return decode_file(
            cfg.input,
            cfg.output,
            ckpt=cfg.ckpt,
            decoder=cfg.decoder,
            steps=cfg.steps,
            seed=cfg.seed,
            reference=cfg.reference,
        )
    if cfg.action == "eval":
        require(cfg, "ckpt")
        return evaluate_checkpoint(
            cfg.ckpt,
            cfg.out_dir,
            video=cfg.input,
            size=cfg.size,
            frames=cfg.frames,
            clips=cfg.clips,
            fps=cfg.fps,
            steps=cfg.steps,
            seed=cfg.seed,
        )
    raise ValueError(f"deltaworld codec: action={cfg.action}; choose encode, decode or eval")
