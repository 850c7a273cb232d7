"""Dense forecasting benchmark: metrics on hand-made tensors, the two-crop split, heads, selection
semantics of best / mean, and the `deltaworld heads` + `deltaworld eval` commands end to end."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_benchmarks_data import make_kitti, make_vspw
from test_training import FAST, cli
from test_world_training import WORLD_FAST
from test_worldmodel import strengthen
from torch.utils.data import Dataset

from deltaworld.data.kitti import KITTI
from deltaworld.data.labelled import SyntheticLabelled
from deltaworld.data.vspw import VSPW
from deltaworld.eval.crops import crops_to_label_halves, split_labels, square_crops
from deltaworld.eval.forecast import evaluate_forecasts, forecast_figure, labelled_batches, oracle
from deltaworld.eval.heads import DepthHead, build_heads, load_heads, save_heads
from deltaworld.eval.metrics import DenseMetrics
from deltaworld.eval.train_heads import evaluate_heads, train_heads
from deltaworld.tokenizer.backbone import build_backbone
from deltaworld.tokenizer.fit import run_training
from deltaworld.tokenizer.training import parameter_digest
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.sampling import ForecastCase, copy_last, sample_futures, world_forecaster
from deltaworld.worldmodel.spaces import DeltaTokens

from conftest import FRAME, compose_train, make_deltatok


def one_hot_logits(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(pred, num_classes).permute(0, 3, 1, 2).float()


def test_miou_on_hand_made_maps_skips_ignored_pixels_and_absent_classes():
    pred = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, 0]]])
    target = torch.tensor([[[0, 1, 1, 255], [2, 2, 0, 0]]])
    metrics = DenseMetrics(num_classes=4)  # class 3 appears nowhere: not averaged in
    metrics.update_segmentation("m", 1, one_hot_logits(pred, 4), target)
    # class 0: 2 shared / 4 in the union; class 1: 1 / 2 (the ignored pixel predicted 1 does not count); class 2: 2 / 3
    (record,) = metrics.records("toy")
    assert record.metric == "miou" and record.value == pytest.approx((0.5 + 0.5 + 2 / 3) / 3, abs=1e-6)


def test_depth_rmse_is_global_over_valid_pixels_of_the_set():
    metrics = DenseMetrics(num_classes=None)
    metrics.update_depth("m", 1, torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[2.0, 2.0]]]))
    metrics.update_depth("m", 1, torch.tensor([[[5.0, 9.0]]]), torch.tensor([[[2.0, 0.0]]]))  # 0: invalid pixel
    (record,) = metrics.records("toy")
    # squared errors 1, 0, 9 over 3 valid pixels, not the mean of per-batch RMSEs (0.71 and 3)
    assert record.value == pytest.approx(math.sqrt(10 / 3), rel=1e-6)


@pytest.mark.parametrize("size", [(6, 9), (6, 10), (6, 12), (9, 6), (5, 5)])
def test_two_crop_split_scores_every_label_pixel_exactly_once(size):
    h, w = size
    _, layout = square_crops(torch.zeros(1, 3, h, w))
    labels = torch.arange(h * w).view(1, h, w)
    halves = split_labels(labels, layout, fill=-1)
    assert halves.shape[0] == layout.num_crops
    seen = halves[halves >= 0].sort().values
    assert torch.equal(seen, torch.arange(h * w))


# (frame h, w, label h, w); the last is KITTI-like: 2:1 frames of wider labels
@pytest.mark.parametrize(
    "size", [(6, 9, 12, 18), (9, 6, 18, 12), (8, 16, 16, 32), (10, 17, 10, 17), (17, 10, 17, 10), (4, 8, 6, 22)]
)
def test_crop_predictions_land_on_the_label_pixels_they_saw(size):
    """An identity 'model' on coordinate maps: each label half must receive the coordinates of
    its own pixels from the crop that covers them (odd label sizes and other label aspects too)."""
    h, w, lh, lw = size

    def coords(hh: int, ww: int) -> torch.Tensor:  # (1, 2, hh, ww): x and y of pixel centres in [0, 1]
        y, x = torch.meshgrid((torch.arange(hh) + 0.5) / hh, (torch.arange(ww) + 0.5) / ww, indexing="ij")
        return torch.stack([x, y])[None]

    crops, layout = square_crops(coords(h, w))
    truth = torch.cat([split_labels(c[None], layout, fill=-1)[:, None] for c in coords(lh, lw)[0]], 1)
    pred = crops_to_label_halves(crops, truth.shape[-2:], layout)  # (2, 2, h', w')
    valid = truth >= 0
    # bilinear upsampling of a ramp is exact away from the borders; at a border it clamps by < 1 source pixel
    assert (pred - truth)[valid].abs().max() < 1 / min(h, w)


def test_frames_wider_than_two_to_one_are_refused():
    with pytest.raises(ValueError, match="wider than 2:1"):
        square_crops(torch.zeros(1, 3, 4, 9))


def test_depth_head_returns_the_expected_bin_centre():
    head = DepthHead(in_dim=3, min_depth=1.0, max_depth=60.0, num_bins=256).eval()
    torch.nn.init.zeros_(head.conv.weight)
    with torch.no_grad():
        head.conv.bias.zero_()
        head.conv.bias[100] = 1e4  # one bin takes (almost) all the weight
    depth = head(torch.randn(2, 3, 4, 5))
    assert depth.shape == (2, 4, 5)
    assert torch.allclose(depth, torch.full_like(depth, head.bins[100].item()), rtol=5e-3)


class PatchColours(Dataset):
    """Trivial labelled frames: each 14x14 patch is one of three flat colours; its colour is its class
    and fixes its depth."""

    name, num_classes, depth_range = "patch_colours", 3, (1.0, 60.0)
    colours = torch.tensor([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=torch.uint8)
    depths = torch.tensor([5.0, 20.0, 45.0])

    def __init__(self, n: int, seed: int) -> None:
        self.classes = torch.from_numpy(np.random.default_rng(seed).integers(0, 3, (n, FRAME // 14, FRAME // 14)))

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, i: int) -> dict:
        seg = self.classes[i].repeat_interleave(14, 0).repeat_interleave(14, 1)  # (H, W)
        return {
            "frames": self.colours[seg].permute(2, 0, 1)[None],  # (1, 3, H, W)
            "timestamps": torch.zeros(1),
            "segmentation": seg,
            "depth": self.depths[seg],
            "index": i,
        }


def test_heads_learn_a_trivial_case_and_survive_a_round_trip(tiny_backbone, tmp_path):
    train, held_out = PatchColours(32, seed=0), PatchColours(16, seed=1)
    heads = build_heads(in_dim=tiny_backbone.dim, num_classes=3, depth_range=PatchColours.depth_range)
    untrained = {
        r.metric: r.value for r in evaluate_heads(backbone=tiny_backbone, heads=heads, dataset=held_out, batch_size=8)
    }
    history = train_heads(
        backbone=tiny_backbone, heads=heads, dataset=train, epochs=12, batch_size=8, lr=3e-2, weight_decay=0.0
    )
    scores = {
        r.metric: r.value for r in evaluate_heads(backbone=tiny_backbone, heads=heads, dataset=held_out, batch_size=8)
    }
    assert history[-1]["segmentation"] < history[0]["segmentation"]
    assert scores["miou"] > 0.9 and scores["depth_rmse"] < 0.5 * untrained["depth_rmse"]

    path = save_heads(heads, tmp_path / "heads.safetensors", {"dataset": "patch_colours"})
    loaded, meta = load_heads(path)
    again = {
        r.metric: r.value for r in evaluate_heads(backbone=tiny_backbone, heads=loaded, dataset=held_out, batch_size=8)
    }
    assert meta["dataset"] == "patch_colours" and again == pytest.approx(scores)


def test_training_the_backbone_with_its_heads_moves_it_and_leaves_it_frozen():
    """The demo's stand-in VFM pretraining: backbone weights train with the heads, beat frozen
    random features on the same budget, and come back frozen (no grad, fresh black-frame cache)."""
    train = PatchColours(32, seed=0)

    def fit(train_backbone: bool) -> tuple[torch.nn.Module, float, torch.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone = build_backbone(img_size=FRAME, arch={"depth": 2, "embed_dim": 64, "num_heads": 4})
        black = backbone.black_features(FRAME, FRAME)  # cached before training
        torch.manual_seed(0)
        heads = build_heads(in_dim=backbone.dim, num_classes=3, depth_range=PatchColours.depth_range)
        history = train_heads(
            backbone=backbone,
            heads=heads,
            dataset=train,
            epochs=3,
            batch_size=8,
            lr=3e-3,
            weight_decay=0.0,
            train_backbone=train_backbone,
        )
        return backbone, history[-1]["depth"], black

    frozen, frozen_loss, _ = fit(False)
    trained, trained_loss, black_before = fit(True)
    assert trained_loss < frozen_loss
    moved = [not torch.equal(a, b) for a, b in zip(frozen.parameters(), trained.parameters(), strict=True)]
    assert all(moved[:3]) and sum(moved) > len(moved) // 2
    assert not any(p.requires_grad for p in trained.parameters())
    assert not torch.equal(trained.black_features(FRAME, FRAME), black_before)


def test_best_is_the_closest_hypothesis_and_mean_averages_features(tiny_backbone):
    torch.manual_seed(0)
    deltatok = strengthen(make_deltatok(tiny_backbone)).eval()
    space = DeltaTokens(deltatok)
    world = strengthen(
        DeltaWorld(
            token_dim=deltatok.token_dim,
            tokens_per_frame=deltatok.num_tokens,
            dim=32,
            depth=1,
            num_heads=2,
            rope_dim=12,
        )
    ).eval()
    feats = torch.randn(2, 5, 16, tiny_backbone.dim)
    times = torch.linspace(0, 1, 5).repeat(2, 1)
    case = ForecastCase(
        horizon=2,
        grid=(4, 4),
        context_feats=feats[:, :3],
        context_times=times[:, :3],
        future_times=times[:, 3:],
        future_feats=feats[:, 3:],
        target_feats=feats[:, -1],
        black=torch.zeros(16, tiny_backbone.dim),
    )
    out = world_forecaster(world, space, samples=6, generator=torch.Generator().manual_seed(3))(case)
    _, hyps = sample_futures(
        world,
        space,
        case.context_feats,
        case.context_times,
        case.future_times,
        grid=(4, 4),
        black=case.black,
        samples=6,
        generator=torch.Generator().manual_seed(3),
    )
    last = hyps[:, :, -1]  # (B, M, N, D) at the target frame
    errors = (last - case.target_feats[:, None]).pow(2).mean((-2, -1))  # (B, M)
    assert torch.equal(out["deltaworld_best"], last[torch.arange(2), errors.argmin(1)])
    assert torch.allclose(out["deltaworld_mean"], last.mean(1))
    best_error = (out["deltaworld_best"] - case.target_feats).pow(2).mean((-2, -1))
    assert torch.all(best_error[:, None] <= errors + 1e-7) and errors.std(1).min() > 0  # distinct hypotheses


@pytest.fixture(scope="module")
def world_ckpt(tmp_path_factory):
    tokenizer = run_training(compose_train([*FAST, "trainer.max_steps=2"], tmp_path_factory.mktemp("tokenizer")))
    return run_training(
        compose_train(
            [*WORLD_FAST, f"tokenizer_ckpt={tokenizer}", "trainer.max_steps=2"], tmp_path_factory.mktemp("world")
        )
    )


def test_heads_and_eval_commands_write_every_row_and_figure(tmp_path, world_ckpt):
    cli(
        [
            "heads",
            f"backbone_from={world_ckpt}",
            "epochs=1",
            "num_workers=0",
            "batch_size=4",
            "data.benchmark.train.num_clips=8",
            "data.benchmark.eval.num_clips=4",
            f"out_dir={tmp_path / 'heads'}",
        ],
        tmp_path,
    )
    heads = tmp_path / "heads" / "heads.safetensors"
    cli(
        [
            "eval",
            f"world_ckpt={world_ckpt}",
            f"deterministic_ckpt={world_ckpt}",
            f"heads={heads}",
            "context=2",
            "horizons=[1,3]",
            "samples=3",
            "num_workers=0",
            "batch_size=2",
            "figure_clips=2",
            "data.benchmark.eval.num_clips=4",
            "data.benchmark.eval.num_frames=5",
            f"out_dir={tmp_path / 'eval'}",
        ],
        tmp_path,
    )
    out = tmp_path / "eval"
    records = json.loads((out / "metrics.json").read_text())
    methods = [
        "oracle",
        "copy_last",
        "tokenizer",
        "repeat_token",
        "extrapolate_token",
        "deltaworld_best",
        "deltaworld_mean",
        "deterministic",
    ]
    got = {(r["method"], r["horizon"], r["metric"]) for r in records}
    assert {(m, h, k) for m in methods for h in (1, 3) for k in ("miou", "depth_rmse", "feat_loss")} <= got
    spread = ("hypothesis_spread_feat", "hypothesis_spread_token")
    assert {(m, h, k) for m, h, k in got if k.startswith("hypothesis_spread")} == {
        ("deltaworld", h, k) for h in (1, 3) for k in spread
    }
    oracle = {r["horizon"]: r["value"] for r in records if r["method"] == "oracle" and r["metric"] == "feat_loss"}
    assert oracle == {1: 0.0, 3: 0.0}
    assert all(r["ci_low"] <= r["ci_high"] for r in records if r["value"] is not None)
    gaps = {(r["method"], r["horizon"], r["metric"]) for r in records if r["metric"].endswith("_gap_recovered")}
    between = [m for m in methods if m not in ("oracle", "copy_last")]
    metrics = ("miou", "depth_rmse", "feat_loss", "feat_cos")
    assert gaps == {(m, h, f"{k}_gap_recovered") for m in between for h in (1, 3) for k in metrics}
    report = (out / "report.md").read_text()
    values_table, gap_table = report.split("## Fraction of the copy_last -> oracle gap recovered")
    assert all(f"| synthetic | {m} |" in values_table for m in methods)
    assert all(f"| synthetic | {m} |" in gap_table for m in between) and "bootstrap interval over the 4 clips" in report
    assert "## Hypothesis spread" in report and "| synthetic | deltaworld |" in report
    # the world export lies in its run folder, beside the run's CSV log
    for figure in ("forecast_h1.png", "forecast_h3.png", "hypotheses.png", "diversity.png", "training_curves.png"):
        assert (out / figure).stat().st_size > 0 and f"({figure})" in report


def test_eval_refuses_heads_of_another_backbone_or_label_set(tmp_path, world_ckpt):
    from deltaworld.eval.benchmark import check_heads
    from deltaworld.tokenizer.checkpoint import load_tokenizer

    backbone, _ = load_tokenizer(world_ckpt)
    dataset = SyntheticLabelled(num_clips=1, height=28, width=28)  # 4 classes and depth
    digest = parameter_digest(backbone)
    for classes, stored_digest, message in ((4, "0" * 64, "trained on another backbone"), (19, digest, "trained for")):
        heads = build_heads(in_dim=backbone.dim, num_classes=classes, depth_range=(1.0, 60.0))
        path = save_heads(heads, tmp_path / f"heads{classes}.safetensors", {"backbone_digest": stored_digest})
        with pytest.raises(ValueError, match=message):
            check_heads(load_heads(path)[1], backbone, dataset, path)
    good = save_heads(
        build_heads(in_dim=backbone.dim, num_classes=4, depth_range=(1.0, 60.0)),
        tmp_path / "good.safetensors",
        {"backbone_digest": digest},
    )
    check_heads(load_heads(good)[1], backbone, dataset, good)


def labelled_fixture(kind: str, root):
    """A benchmark adapter on a tiny fixture: VSPW (5:3 frames, overlapping crops, labels of the
    frame's aspect) or KITTI (frames capped at 2:1 while the depth labels are 3.5:1)."""
    if kind == "vspw":
        return VSPW(root=make_vspw(root), split="val", frame_size=28)
    return KITTI(root=make_kitti(root), split="val", frame_size=28, split_file=root / "eigen.txt")


@pytest.mark.parametrize("kind", ["vspw", "kitti"])
def test_benchmark_scores_non_square_datasets_through_two_crops(tmp_path, tiny_backbone, kind):
    dataset = labelled_fixture(kind, tmp_path)
    assert dataset[0]["frames"].shape[-2:] == {"vspw": (28, 47), "kitti": (28, 56)}[kind]
    torch.manual_seed(0)
    heads = build_heads(
        in_dim=tiny_backbone.dim, num_classes=dataset.num_classes, depth_range=dataset.depth_range
    ).eval()
    records = evaluate_forecasts(
        backbone=tiny_backbone,
        batches=labelled_batches(dataset, batch_size=2, num_workers=0, shuffle=False, seed=0),
        methods=[oracle, copy_last],
        context=4,
        horizons=[1, 2],
        dataset=dataset.name,
        heads=heads,
        num_classes=dataset.num_classes,
    )
    values = {(r.method, r.horizon, r.metric): r.value for r in records}
    assert values[("oracle", 1, "feat_loss")] == 0 and values[("copy_last", 2, "feat_loss")] > 0
    metric = "miou" if kind == "vspw" else "depth_rmse"
    assert ("oracle", 1, metric) in values and ("copy_last", 2, metric) in values
    figure = forecast_figure(
        tmp_path / "f.png",
        backbone=tiny_backbone,
        heads=heads,
        methods=[oracle, copy_last],
        clip=dataset[0],
        context=4,
        horizon=2,
        num_classes=dataset.num_classes,
        depth_range=dataset.depth_range,
    )
    assert figure.stat().st_size > 0


def test_forecast_figure_draws_the_rgb_head_as_one_more_column(tmp_path, tiny_backbone):
    from PIL import Image

    dataset = SyntheticLabelled(num_clips=1, height=28, width=28)
    widths = {}
    for rgb_patch in (None, tiny_backbone.patch_size):
        torch.manual_seed(0)
        heads = build_heads(
            in_dim=tiny_backbone.dim,
            num_classes=dataset.num_classes,
            depth_range=dataset.depth_range,
            rgb_patch=rgb_patch,
        ).eval()
        figure = forecast_figure(
            tmp_path / f"f{rgb_patch}.png",
            backbone=tiny_backbone,
            heads=heads,
            methods=[oracle, copy_last],
            clip=dataset[0],
            context=2,
            horizon=1,
            num_classes=dataset.num_classes,
            depth_range=dataset.depth_range,
        )
        widths[rgb_patch] = Image.open(figure).size[0]
    # rows: context | target (3 cells), then PCA | seg | depth per method, and RGB with the head
    assert widths[tiny_backbone.patch_size] > widths[None]
