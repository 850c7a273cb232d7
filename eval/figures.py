"""Figures as PNG files (matplotlib; the commands that draw choose the headless backend) and
animated GIF grids (PIL)."""

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from PIL import Image


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out, write (PNG, 110 dpi) and close a figure."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


MAX_COLUMNS, MAX_ROWS = 16, 24  # at 1.6 in a cell and 110 dpi: at most about 12 megapixels
CELL_PIXELS = 176  # a GIF cell's side: a PNG cell's 1.6 in at 110 dpi, so a GIF frame is capped alike
GAP_PIXELS = 2  # black lines between GIF cells


def image_grid(
    rows: list[tuple[str, list[torch.Tensor | None]]],
    path: str | Path,
    *,
    col_titles: list[str] | None = None,
    cell: float = 1.6,
) -> Path:
    """Rows of images (H, W, 3) float in [0, 1] or uint8 (3, H, W); None leaves a blank cell. At most
    MAX_COLUMNS columns and MAX_ROWS rows are drawn (the rest is left out, said in the last title),
    so a long horizon or many hypotheses never make a figure of hundreds of megapixels."""
    num_cols = max(len(images) for _, images in rows)
    rows = [(label, images[:MAX_COLUMNS]) for label, images in rows[:MAX_ROWS]]
    if num_cols > MAX_COLUMNS:
        col_titles = [*(col_titles or [""] * MAX_COLUMNS)[: MAX_COLUMNS - 1], f"(first {MAX_COLUMNS} of {num_cols})"]
        num_cols = MAX_COLUMNS
    fig, axes = plt.subplots(len(rows), num_cols, figsize=(cell * num_cols + 1.2, cell * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(num_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = images[c] if c < len(images) else None
            if image is not None:
                if image.dtype == torch.uint8:
                    image = image.permute(1, 2, 0)
                ax.imshow(image.cpu().numpy(), interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and col_titles and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=8)
    return save_figure(fig, path)


def hypothesis_grid(
    path: str | Path,
    *,
    frames: torch.Tensor,
    context_feats: torch.Tensor,
    hypotheses: torch.Tensor,
    grid: tuple[int, int],
    future_feats: torch.Tensor | None = None,
    times: list[float] | None = None,
    max_rows: int = 8,
) -> Path:
    """Context frames, then one row per hypothesis as PCA feature maps sharing one projection.

    frames uint8 (T, 3, H, W) (context, then the true future when known); context_feats (Tc, N, D);
    hypotheses (M, Hf, N, D); future_feats (Hf, N, D) adds a ground-truth row.
    """
    from deltaworld.eval.pca import PCAProjection

    tc = context_feats.shape[0]
    known = [context_feats] + ([future_feats] if future_feats is not None else [])
    pca = PCAProjection(torch.cat(known))  # fitted on true features: predictions share its colours
    blank = [None] * tc
    rows = [("frames", list(frames)), ("true features (PCA)", list(pca(torch.cat(known), grid)))]
    for m, hyp in enumerate(hypotheses[:max_rows]):
        rows.append((f"hypothesis {m}", blank + list(pca(hyp, grid))))
    titles = [f"t={t:.2f}s" + (" (ctx)" if i < tc else "") for i, t in enumerate(times)] if times else None
    return image_grid(rows, path, col_titles=titles)


def animated_grid(
    frames: list[list[torch.Tensor | None]], path: str | Path, *, columns: int, duration_ms: int = 400
) -> Path:
    """An animated GIF, looping: each frame a grid of cells, row-major in `columns` columns, each cell
    an image (H, W, 3) float in [0, 1] resized (nearest) to CELL_PIXELS square; None stays black.
    At most MAX_COLUMNS columns and MAX_ROWS rows are drawn (later cells left out), so a frame is
    at most about 2.8k x 4.2k pixels, as the PNG figures are."""
    columns = min(columns, MAX_COLUMNS)
    cells_per_frame = min(max(len(cells) for cells in frames), columns * MAX_ROWS)
    rows = -(-cells_per_frame // columns)
    step = CELL_PIXELS + GAP_PIXELS
    images = []
    for cells in frames:
        canvas = Image.new("RGB", (columns * step - GAP_PIXELS, rows * step - GAP_PIXELS))
        for i, cell in enumerate(cells[:cells_per_frame]):
            if cell is not None:
                pixels = (cell.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # (H, W, 3)
                image = Image.fromarray(pixels).resize((CELL_PIXELS, CELL_PIXELS), Image.NEAREST)
                canvas.paste(image, ((i % columns) * step, (i // columns) * step))
        images.append(canvas)
    path = Path(path)
    # PIL stores a frame equal to the one before once, with their durations summed: the timing holds
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def colorize_segmentation(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Class map (h, w) int -> (h, w, 3) in [0, 1]; one fixed colour per class, ignored pixels black."""
    palette = torch.tensor(plt.get_cmap("tab20")(range(20)))[:, :3].float()
    colours = palette[torch.arange(num_classes) % len(palette)]
    out = colours[labels.long().clamp(0, num_classes - 1).cpu()]
    out[(labels == ignore_index).cpu()] = 0
    return out


def colorize_depth(depth: torch.Tensor, depth_range: tuple[float, float]) -> torch.Tensor:
    """Depth map (h, w) metres -> (h, w, 3) in [0, 1] on a fixed scale (near = bright); invalid (<= 0) black."""
    low, high = depth_range
    scaled = 1 - ((depth.float().cpu() - low) / (high - low)).clamp(0, 1)
    out = torch.tensor(plt.get_cmap("magma")(scaled.numpy()))[..., :3].float()
    out[depth.cpu() <= 0] = 0
    return out


def diversity_plot(path: str | Path, stats: dict) -> Path:
    """Per predicted step: distance between hypotheses (spread) and the best / mean hypothesis' error."""
    times = stats.get("future_times") or list(range(1, len(stats["pairwise_distance"]) + 1))
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.plot(times, stats["pairwise_distance"], "o-", label="pairwise distance (features)")
    if "token_pairwise_distance" in stats:
        left.plot(times, stats["token_pairwise_distance"], "s--", label="pairwise distance (tokens)")
    left.set_title(f"diversity of {stats['samples']} samples", fontsize=9)
    if "best_to_truth" in stats:
        right.plot(times, stats["best_to_truth"], "o-", label="best hypothesis")
        right.plot(times, stats["mean_to_truth"], "s-", label="mean of hypotheses")
    right.set_title("feature MSE to the truth", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("future time (s)" if "future_times" in stats else "step")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def training_curves_plot(path: str | Path, curves: dict[str, dict[str, tuple[list[int], list[float]]]]) -> Path:
    """Losses against the training step, curves[run][series] = (steps, values): one colour per run,
    one line style per series; a log scale when every value is positive, as losses spanning
    decades are."""
    styles = ["-", "--", ":", "-."]
    series = list(dict.fromkeys(name for run in curves.values() for name in run))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for colour, (run, logged) in enumerate(curves.items()):
        for name, (steps, values) in logged.items():
            style = styles[series.index(name) % len(styles)]
            ax.plot(steps, values, style, color=f"C{colour}", linewidth=1, label=f"{run}: {name}")
    if all(v > 0 for logged in curves.values() for _, values in logged.values() for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    return save_figure(fig, path)
