"""Evaluating the pixel DeltaToken as a codec: per-frame PSNR/SSIM of the deterministic and the
diffusion decoder against copy-last baselines, metric records and figures."""

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from deltaworld.eval.figures import image_grid, save_figure
from deltaworld.eval.records import Record
from deltaworld.tokenizer.pixel import PixelDeltaToken, to_uint8, to_unit
from deltaworld.tokenizer.pixel_metrics import psnr_per_frame, ssim_per_frame


@dataclass
class CodecResult:
    frames: torch.Tensor  # (B, T, 3, H, W) in [-1, 1], the originals
    decoded: dict[str, torch.Tensor]  # method -> (B, T, 3, H, W)
    psnr: dict[str, torch.Tensor]  # method -> (T,) mean over clips
    ssim: dict[str, torch.Tensor]


@torch.no_grad()
def evaluate_codec(model: PixelDeltaToken, frames: torch.Tensor, *, steps: int = 4, seed: int = 0) -> CodecResult:
    """uint8 clips (B, T, 3, H, W) -> per-frame metrics of `deterministic`, `diffusion` (if the model
    has a denoiser) and `copy_last` (frame t shown as the true frame t-1; frame 0 as black)."""
    x = to_unit(frames)
    tokens, det = model.encode_video(x)
    decoded = {"deterministic": det}
    if model.denoiser is not None:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        decoded["diffusion"] = model.decode_video(
            model.split_tokens(tokens), x.shape[-2:], decoder="diffusion", steps=steps, generator=generator
        )
    decoded["copy_last"] = torch.cat((torch.full_like(x[:, :1], -1.0), x[:, :-1]), dim=1)
    psnr = {k: psnr_per_frame(v, x).mean(0) for k, v in decoded.items()}
    ssim = {k: ssim_per_frame(v, x).mean(0) for k, v in decoded.items()}
    return CodecResult(x, decoded, psnr, ssim)


def codec_records(result: CodecResult, dataset: str) -> list[Record]:
    """Per-frame values as horizon = frame index, and the clip mean (frames >= 1, where copy-last
    is defined) as horizon = -1."""
    records = []
    for metric, table in (("psnr", result.psnr), ("ssim", result.ssim)):
        for method, values in table.items():
            records += [Record(dataset, method, t, metric, float(v)) for t, v in enumerate(values)]
            records.append(Record(dataset, method, -1, metric, float(values[1:].mean())))
    return records


def reconstruction_figure(result: CodecResult, path: str | Path, *, clip: int = 0, max_frames: int = 8) -> Path:
    """Rows: original, then each decoder's output, for the first frames of one clip."""
    rows = [("original", list(to_uint8(result.frames[clip, :max_frames])))]
    rows += [(name, list(to_uint8(v[clip, :max_frames]))) for name, v in result.decoded.items() if name != "copy_last"]
    titles = [f"frame {t}" for t in range(min(max_frames, result.frames.shape[1]))]
    return image_grid(rows, path, col_titles=titles)


def psnr_over_time_figure(result: CodecResult, path: str | Path) -> Path:
    """PSNR per frame index: drift shows as a falling curve; key frames as jumps."""
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, values in result.psnr.items():
        ax.plot(range(len(values)), values.numpy(), marker="o", ms=3, label=name)
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
