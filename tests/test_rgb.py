"""The RGB visualisation head: it learns pixels from features that encode them linearly, leaves the
segmentation and depth heads bit-identical, old heads files load without it, and `futures.gif`."""

import test_dense_eval
import torch
import torch.nn as nn
from einops import rearrange
from PIL import Image
from test_training import cli
from torch.utils.data import Dataset

from deltaworld.eval.figures import CELL_PIXELS, GAP_PIXELS, MAX_COLUMNS, MAX_ROWS, animated_grid
from deltaworld.eval.heads import RGBHead, build_heads, heads_config, load_heads, save_heads
from deltaworld.eval.sample import futures_gif
from deltaworld.eval.train_heads import evaluate_heads, rgb_loss, train_heads
from deltaworld.tokenizer.checkpoint import export_safetensors, load_tokenizer
from deltaworld.tokenizer.schema import stamp
from deltaworld.tokenizer.training import parameter_digest

P = 4  # patch size of the stand-in backbone
PatchColours, world_ckpt = test_dense_eval.PatchColours, test_dense_eval.world_ckpt  # a dataset, a module fixture


class PixelBackbone(nn.Module):
    """Features that are a fixed rotation of each patch's p x p x 3 pixels in [0, 1]: an exact
    linear code of the frame, so a linear RGB head can reconstruct it."""

    patch_size, dim = P, 3 * P * P

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(
            "rotation", torch.linalg.qr(torch.randn(self.dim, self.dim, generator=torch.Generator().manual_seed(0)))[0]
        )

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // P, width // P

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, 3, H, W) -> (B, T, N, D)."""
        patches = rearrange(frames.float() / 255, "b t c (h p) (w q) -> b t (h w) (c p q)", p=P, q=P)
        return patches @ self.rotation

    forward = features


class NoiseFrames(Dataset):
    """Frames of uniform noise with a flat depth label (the heads need a task to build)."""

    name, num_classes, depth_range = "noise", None, (1.0, 10.0)

    def __init__(self, n: int, seed: int, size: int = 16) -> None:
        self.frames = torch.randint(0, 256, (n, 1, 3, size, size), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict:
        size = self.frames.shape[-1]
        return {
            "frames": self.frames[i].to(torch.uint8),
            "timestamps": torch.zeros(1),
            "depth": torch.full((size, size), 5.0),
        }


def test_rgb_head_reconstructs_frames_whose_features_encode_them_linearly():
    backbone, train, held_out = PixelBackbone(), NoiseFrames(64, seed=0), NoiseFrames(16, seed=1)
    heads = build_heads(in_dim=backbone.dim, num_classes=None, depth_range=NoiseFrames.depth_range, rgb_patch=P)
    history = train_heads(
        backbone=backbone, heads=heads, dataset=train, epochs=10, batch_size=16, lr=3e-2, weight_decay=0.0
    )
    frames = held_out.frames[:, 0]  # (B, 3, H, W)
    with torch.no_grad():
        error = rgb_loss(heads["rgb"], backbone(frames[:, None])[:, 0], (4, 4), frames).item()
    mean_colour = frames.float().div(255).mean((0, 2, 3), keepdim=True)
    baseline = (frames.float() / 255 - mean_colour).pow(2).mean().item()  # ~1/12
    assert history[-1]["rgb"] < history[0]["rgb"]
    assert error < 0.1 * baseline  # near-perfect, far below predicting the mean colour


def test_segmentation_and_depth_train_and_score_bit_identically_with_an_rgb_head(tiny_backbone):
    train, held_out = PatchColours(16, seed=0), PatchColours(8, seed=1)

    def fit(rgb_patch: int | None) -> tuple[nn.ModuleDict, list, dict, torch.Tensor]:
        torch.manual_seed(0)
        heads = build_heads(
            in_dim=tiny_backbone.dim, num_classes=3, depth_range=PatchColours.depth_range, rgb_patch=rgb_patch
        )
        history = train_heads(
            backbone=tiny_backbone, heads=heads, dataset=train, epochs=2, batch_size=8, lr=3e-2, weight_decay=1e-2
        )
        scores = {
            r.metric: r.value
            for r in evaluate_heads(backbone=tiny_backbone, heads=heads, dataset=held_out, batch_size=8)
        }
        return heads, history, scores, torch.rand(1)  # the global generator after building and training

    plain, plain_history, plain_scores, plain_draw = fit(None)
    with_rgb, rgb_history, rgb_scores, rgb_draw = fit(tiny_backbone.patch_size)
    assert set(with_rgb) == {"segmentation", "depth", "rgb"} and "rgb" in rgb_history[0]
    assert rgb_scores == plain_scores and torch.equal(rgb_draw, plain_draw)
    assert [{k: v for k, v in epoch.items() if k != "rgb"} for epoch in rgb_history] == plain_history
    for task in ("segmentation", "depth"):
        for (name, a), b in zip(plain[task].state_dict().items(), with_rgb[task].state_dict().values(), strict=True):
            assert torch.equal(a, b), f"{task}.{name}"


def test_heads_files_round_trip_the_rgb_head_and_older_files_load_without_it(tmp_path):
    heads = build_heads(in_dim=8, num_classes=3, depth_range=(1.0, 60.0), rgb_patch=2).eval()
    loaded, _ = load_heads(save_heads(heads, tmp_path / "rgb.safetensors", {}))
    assert isinstance(loaded["rgb"], RGBHead) and loaded["rgb"].patch_size == 2
    assert all(
        torch.equal(a, b) for a, b in zip(heads.state_dict().values(), loaded.state_dict().values(), strict=True)
    )

    old = build_heads(in_dim=8, num_classes=3, depth_range=(1.0, 60.0))
    config = heads_config(old)
    del config["rgb_patch"]  # what files written before the RGB head hold
    path = export_safetensors(old, tmp_path / "old.safetensors", stamp("heads", {"heads": config}))
    loaded, meta = load_heads(path)
    assert set(loaded) == {"segmentation", "depth"} and "rgb_patch" not in meta["heads"]


def gif_frames(path) -> tuple[int, tuple[int, int]]:
    with Image.open(path) as gif:
        return gif.n_frames, gif.size


def test_futures_gif_has_one_frame_per_step_and_a_capped_size(tmp_path):
    torch.manual_seed(0)
    context, future, hyps = torch.randn(3, 16, 48), torch.randn(2, 16, 48), torch.randn(10, 2, 16, 48)
    rgb = RGBHead(in_dim=48, patch_size=P).eval()
    step = CELL_PIXELS + GAP_PIXELS
    for name, head, truth in (("pca.gif", None, future), ("rgb.gif", rgb, future), ("no_truth.gif", rgb, None)):
        path = futures_gif(
            tmp_path / name, context_feats=context, hypotheses=hyps, future_feats=truth, grid=(4, 4), rgb_head=head
        )
        # 8 of 10 hypotheses as (truth | hypothesis) pairs, 4 pairs a row: 8 columns, 2 rows
        assert gif_frames(path) == (5, (8 * step - GAP_PIXELS, 2 * step - GAP_PIXELS))

    cells = [[torch.rand(6, 6, 3)] * 2000, [None] * 2000]
    frames, size = gif_frames(animated_grid(cells, tmp_path / "big.gif", columns=100))
    assert frames == 2 and size == (MAX_COLUMNS * step - GAP_PIXELS, MAX_ROWS * step - GAP_PIXELS)


def test_sample_command_writes_futures_through_the_rgb_head(tmp_path, world_ckpt):
    backbone, _ = load_tokenizer(world_ckpt)
    heads = build_heads(in_dim=backbone.dim, num_classes=4, depth_range=(1.0, 60.0), rgb_patch=backbone.patch_size)
    path = save_heads(heads, tmp_path / "heads.safetensors", {"backbone_digest": parameter_digest(backbone)})
    for name, extra in (("pca", []), ("rgb", [f"heads={path}"])):
        out = tmp_path / name
        cli(
            ["sample", f"world_ckpt={world_ckpt}", "context=2", "horizon=3", "samples=3", f"out_dir={out}", *extra],
            tmp_path,
        )
        step = CELL_PIXELS + GAP_PIXELS
        assert gif_frames(out / "futures.gif") == (5, (6 * step - GAP_PIXELS, step - GAP_PIXELS))
