"""The report's intervals and gap fractions: paired bootstrap over per-clip statistics on hand-made
clips (exact resamples, zero width on identical clips, coverage of a known mean, paired narrower
than unpaired), the gap formula both ways round, the report and metrics.json carrying both, and
the benchmark's full-set values left as the reference computes them."""

import math
import re
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchmetrics import MeanSquaredError
from torchmetrics.classification import MulticlassJaccardIndex

from deltaworld.data.labelled import IGNORE_INDEX
from deltaworld.eval.bootstrap import GAP_SUFFIX, bootstrap_records, gap_recovered, interval, resample_weights
from deltaworld.eval.forecast import crop_batch, evaluate_forecasts, head_maps, labelled_batches, oracle
from deltaworld.eval.heads import build_heads
from deltaworld.eval.metrics import ClipStats, DenseMetrics, confusion_rows, depth_sums
from deltaworld.eval.records import Record, read_metrics
from deltaworld.eval.report import write_report
from deltaworld.worldmodel.sampling import copy_last, forecast_cases


def full_set(stats: ClipStats, key: tuple[str, int, str]) -> float:
    """The metric of `key` on every clip once."""
    return stats.metric(key, torch.ones(1, stats.num_clips)).item()


def mean_stats(values: dict[str, torch.Tensor]) -> ClipStats:
    """Per-clip values (clips,) of each method as a mean metric (feat_loss: sum and count 1 per clip)."""
    stats = ClipStats()
    for method, x in values.items():
        stats.add((method, 1, "feat_loss"), torch.arange(len(x)), torch.stack([x, torch.ones_like(x)], 1))
    return stats


def random_maps(clips: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Maps (clips, 6, 7): predicted and true classes of 3 (some ignored), predicted and true depths
    (some invalid)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (clips, 6, 7), generator=g)
    pred = torch.where(
        torch.rand(clips, 6, 7, generator=g) < 0.6, labels, torch.randint(0, 3, (clips, 6, 7), generator=g)
    )
    labels[torch.rand(clips, 6, 7, generator=g) < 0.1] = IGNORE_INDEX
    target = torch.rand(clips, 6, 7, generator=g) * 10
    target[target < 1] = 0.0
    depth = target + torch.randn(clips, 6, 7, generator=g)
    return pred, labels, depth, target


def test_gap_fraction_runs_from_copy_last_to_oracle_whichever_way_the_metric_improves():
    def gap(value: float, copy: float, upper: float) -> float:
        return gap_recovered(*torch.tensor([value, copy, upper], dtype=torch.float64)).item()

    assert gap(0.6, 0.4, 0.8) == pytest.approx(0.5)  # miou: higher is better
    assert gap(3.0, 4.0, 2.0) == pytest.approx(0.5)  # depth_rmse: lower is better
    assert gap(0.004, 0.005, 0.0) == pytest.approx(0.2)  # feat_loss: the oracle's is 0, the gap is not
    assert gap(4.5, 4.0, 2.0) == pytest.approx(-0.25) and gap(0.9, 0.4, 0.8) == pytest.approx(1.25)
    assert gap(0.4, 0.4, 0.8) == 0 and gap(0.8, 0.4, 0.8) == 1
    assert math.isnan(gap(0.5, 0.4, 0.4))  # no gap to recover


def test_a_resample_scores_the_drawn_clips_as_the_full_set_is_scored():
    """Per-clip confusion matrices and (squared error, count) sums, weighted by a resample's draw
    counts, give torchmetrics' mIoU and RMSE of the drawn clips' pixels (repeats included)."""
    pred, labels, depth, target = random_maps(clips=12, seed=0)
    metrics = DenseMetrics(num_classes=3)
    clips = torch.arange(12)
    # as crops: two rows per clip, the clip's halves, in the crops' batch order (first halves, then second)
    halves = [torch.cat([x[..., :3], x[..., 3:6]]) for x in (pred, labels, depth, target)]
    metrics.update_segmentation("m", 1, F.one_hot(halves[0], 3).permute(0, 3, 1, 2).float(), halves[1], clips.repeat(2))
    metrics.update_depth("m", 1, halves[2], halves[3], clips.repeat(2))
    stats = metrics.clip_stats
    weights = resample_weights(12, resamples=3, seed=0)
    for w in (torch.ones(12), *weights):
        drawn = torch.arange(12).repeat_interleave(w.long())
        miou = MulticlassJaccardIndex(3, ignore_index=IGNORE_INDEX, average="macro")
        miou.update(pred[drawn, :, :6], labels[drawn, :, :6])
        valid = target[drawn, :, :6] > 0
        rmse = MeanSquaredError(squared=False)
        rmse.update(depth[drawn, :, :6][valid], target[drawn, :, :6][valid])
        assert stats.metric(("m", 1, "miou"), w[None]).item() == pytest.approx(miou.compute().item(), abs=1e-6)
        assert stats.metric(("m", 1, "depth_rmse"), w[None]).item() == pytest.approx(rmse.compute().item(), rel=1e-6)
    # and the full set is the running value the records carry
    values = {r.metric: r.value for r in metrics.records("toy")}
    assert full_set(stats, ("m", 1, "miou")) == pytest.approx(values["miou"], abs=1e-6)
    assert full_set(stats, ("m", 1, "depth_rmse")) == pytest.approx(values["depth_rmse"], rel=1e-6)


def test_identical_clips_give_a_zero_width_interval_and_intervals_hold_the_value():
    pred, labels, depth, target = random_maps(clips=1, seed=1)
    same, varied = ClipStats(), ClipStats()
    for stats, maps in (
        (same, [x.expand(20, -1, -1) for x in (pred, labels, depth, target)]),
        (varied, random_maps(20, 2)),
    ):
        stats.add(("m", 1, "miou"), torch.arange(20), confusion_rows(maps[0], maps[1], 3))
        stats.add(("m", 1, "depth_rmse"), torch.arange(20), depth_sums(maps[2], maps[3]))
    for stats, zero_width in ((same, True), (varied, False)):
        records = [Record("toy", "m", 1, k, full_set(stats, ("m", 1, k))) for k in ("miou", "depth_rmse")]
        for r in bootstrap_records(records, stats, resamples=200):
            assert r.ci_low <= r.value <= r.ci_high
            assert (r.ci_high - r.ci_low < 1e-12) == zero_width


def test_the_interval_of_a_known_mean_covers_it_at_the_expected_width():
    """Clips drawn from N(0.5, 0.2^2): the 95% interval of their mean covers 0.5 in about 95% of
    sets, with about the normal interval's width 2 * 1.96 * 0.2 / sqrt(n)."""
    n, sets = 200, 40
    g = torch.Generator().manual_seed(0)
    covered, widths = 0, []
    for i in range(sets):
        x = 0.5 + 0.2 * torch.randn(n, generator=g, dtype=torch.float64)
        stats = mean_stats({"m": x})
        (r,) = bootstrap_records([Record("toy", "m", 1, "feat_loss", x.mean().item())], stats, seed=i)
        covered += r.ci_low <= 0.5 <= r.ci_high
        widths.append(r.ci_high - r.ci_low)
    assert covered / sets >= 0.85
    assert sum(widths) / sets == pytest.approx(2 * 1.96 * 0.2 / math.sqrt(n), rel=0.1)


def test_paired_resampling_narrows_the_interval_of_a_difference_between_correlated_methods():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, generator=g, dtype=torch.float64)  # clips differ a lot in difficulty ...
    stats = mean_stats({"a": x, "b": x + 0.05 + 0.01 * torch.randn(100, generator=g, dtype=torch.float64)})
    a, b = ("a", 1, "feat_loss"), ("b", 1, "feat_loss")  # ... the methods by little
    same, other = resample_weights(100, 1000, seed=0), resample_weights(100, 1000, seed=1)
    paired = interval(stats.metric(b, same) - stats.metric(a, same), 0.95)
    unpaired = interval(stats.metric(b, other) - stats.metric(a, same), 0.95)
    assert paired[0] > 0.04 and paired[1] < 0.06  # the true shift 0.05, resolved
    assert paired[1] - paired[0] < 0.2 * (unpaired[1] - unpaired[0])


def test_report_and_metrics_json_carry_intervals_and_gap_fractions(tmp_path):
    """Hand-made clips of three methods on a lower-is-better metric (depth_rmse) and a mean one
    whose bounds coincide: metrics.json keeps the values and adds intervals and gap records, the
    report shows both tables."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, generator=g, dtype=torch.float64)
    stats = mean_stats({"oracle": x, "copy_last": x, "m": x + 0.1})  # feat_loss: no gap
    for method, error in (("oracle", 1.0), ("copy_last", 3.0), ("m", 2.0)):
        sq = (error + 0.3 * torch.randn(30, 5, generator=g, dtype=torch.float64)).pow(2)
        stats.add((method, 1, "depth_rmse"), torch.arange(30), torch.stack([sq.sum(1), torch.full((30,), 5.0)], 1))
    keys = [(m, 1, k) for m in ("oracle", "copy_last", "m") for k in ("depth_rmse", "feat_loss")]
    records = bootstrap_records([Record("toy", *k, full_set(stats, k)) for k in keys], stats)
    write_report(tmp_path, records, title="toy")

    loaded = {(r.method, r.metric): r for r in read_metrics(tmp_path / "metrics.json")}
    assert set(loaded) == {(m, k) for m, _, k in keys} | {
        ("m", "depth_rmse" + GAP_SUFFIX),
        ("m", "feat_loss" + GAP_SUFFIX),
    }
    value = {m: loaded[(m, "depth_rmse")].value for m in ("m", "copy_last", "oracle")}
    gap = loaded[("m", "depth_rmse" + GAP_SUFFIX)]
    assert gap.value == pytest.approx((value["m"] - value["copy_last"]) / (value["oracle"] - value["copy_last"]))
    assert 0.3 < gap.ci_low < gap.value < gap.ci_high < 0.7
    assert loaded[("m", "feat_loss" + GAP_SUFFIX)].value is None
    assert all(r.ci_low <= r.value <= r.ci_high for k, r in loaded.items() if not k[1].endswith(GAP_SUFFIX))

    report = (tmp_path / "report.md").read_text()
    values_table, gap_table = report.split("## Fraction of the copy_last -> oracle gap recovered")
    row = re.search(r"\| toy \| m \| (.*) \|", values_table).group(1).split(" | ")  # depth_rmse h=1 | feat_loss h=1
    m = loaded[("m", "depth_rmse")]
    assert row[0] == f"{m.value:.4g} [{m.ci_low:.4g}, {m.ci_high:.4g}]"
    assert "| toy | oracle | **" in values_table
    header, _, gap_row = gap_table.strip().splitlines()[2:5]
    assert header == "| dataset | method | depth_rmse h=1 | feat_loss h=1 |"
    assert gap_row == f"| toy | m | **{gap.value:.1%}** [{gap.ci_low:.1%}, {gap.ci_high:.1%}] | n/a |"


class RandomClips(Dataset):
    """Random 6-frame clips of 56x84 (two overlapping crops), with 4-class and depth labels."""

    name, num_classes, depth_range = "random", 4, (1.0, 60.0)

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.frames = torch.randint(0, 256, (n, 6, 3, 56, 84), generator=g, dtype=torch.uint8)
        self.segmentation = torch.randint(0, 4, (n, 56, 84), generator=g)
        self.segmentation[torch.rand(n, 56, 84, generator=g) < 0.1] = IGNORE_INDEX
        self.depth = (torch.rand(n, 56, 84, generator=g) * 50 + 1) * (torch.rand(n, 56, 84, generator=g) > 0.2)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict:
        return {
            "frames": self.frames[i],
            "timestamps": torch.arange(6) * 0.1,
            "segmentation": self.segmentation[i],
            "depth": self.depth[i],
            "index": i,
        }


def halfway(case) -> dict[str, torch.Tensor]:
    """A method between the bounds: halfway from the last context features to the target's."""
    return {"halfway": (case.context_feats[:, -1] + case.target_feats) / 2}


def dense_score(metric: str, pred: torch.Tensor, target: torch.Tensor) -> float:
    """torchmetrics on pixels (P,): miou of predicted classes, depth_rmse of depths (over the valid pixels)."""
    if metric == "miou":
        return MulticlassJaccardIndex(4, ignore_index=IGNORE_INDEX)(pred, target).item()
    return MeanSquaredError(squared=False)(pred[target > 0], target[target > 0]).item()


def test_benchmark_values_stay_the_reference_computation_bit_for_bit(tiny_backbone):
    """The intervals and gap fractions are additions: each value is still torchmetrics' mIoU / RMSE
    over every scored pixel of the set (updated batch by batch) and the clip-weighted batch means of
    the feature metrics. The intervals are torchmetrics' on the resampled clips, both crops of a
    clip drawn together."""
    methods = [oracle, copy_last, halfway]
    dataset = RandomClips(5)
    torch.manual_seed(0)
    heads = build_heads(in_dim=tiny_backbone.dim, num_classes=4, depth_range=dataset.depth_range).eval()
    records = evaluate_forecasts(
        backbone=tiny_backbone,
        batches=labelled_batches(dataset, batch_size=2, num_workers=0, shuffle=False, seed=0),
        methods=methods,
        context=3,
        horizons=[1, 2],
        dataset=dataset.name,
        heads=heads,
        num_classes=4,
        resamples=20,
        seed=3,
    )
    running, sums, counts = {}, defaultdict(float), defaultdict(int)
    pixels = defaultdict(lambda: defaultdict(list))  # key -> clip -> [(pred, target) (P,) per crop]
    for i, batch in enumerate(labelled_batches(dataset, batch_size=2, num_workers=0, shuffle=False, seed=0)):
        frames, times, labels, layout = crop_batch(batch, heads)
        clips = 2 * i + torch.arange(len(frames)) % len(batch["frames"])  # (n*B,) batches of 2 clips, 2 crops each
        feats = tiny_backbone(frames)
        grid, black = tiny_backbone.grid(56, 56), tiny_backbone.black_features(56, 56)
        for case in forecast_cases(feats, times, grid, black, context=3, horizons=[1, 2]):
            for method in methods:
                for name, pred in method(case).items():
                    target = case.target_feats.float()
                    for k, v in (
                        ("feat_loss", F.mse_loss(pred, target)),
                        ("feat_cos", F.cosine_similarity(pred, target, -1).mean()),
                    ):
                        sums[(name, case.horizon, k)] += v.item() * len(frames)
                        counts[(name, case.horizon, k)] += len(frames)
                    seg = head_maps(heads["segmentation"], "segmentation", pred, grid, (56, 42), layout).argmax(1)
                    depth = head_maps(heads["depth"], "depth", pred, grid, (56, 42), layout)
                    valid = labels["depth"] > 0
                    for k, metric, update in (
                        ("miou", MulticlassJaccardIndex(4, ignore_index=IGNORE_INDEX), (seg, labels["segmentation"])),
                        ("depth_rmse", MeanSquaredError(squared=False), (depth[valid], labels["depth"][valid])),
                    ):
                        running.setdefault((name, case.horizon, k), metric).update(*update)
                    for row, clip in enumerate(clips.tolist()):
                        pixels[(name, case.horizon, "miou")][clip].append((seg[row], labels["segmentation"][row]))
                        pixels[(name, case.horizon, "depth_rmse")][clip].append((depth[row], labels["depth"][row]))
    expected = {k: sums[k] / counts[k] for k in sums} | {k: m.compute().item() for k, m in running.items()}
    got = {(r.method, r.horizon, r.metric): r for r in records if not r.metric.endswith(GAP_SUFFIX)}
    assert got.keys() == expected.keys()
    assert all(got[k].value == expected[k] for k in expected)  # exactly
    weights = resample_weights(5, 20, seed=3)
    for key, per_clip in pixels.items():
        draws = []
        for w in weights:
            drawn = [crop for clip, n in enumerate(w.long().tolist()) for _ in range(n) for crop in per_clip[clip]]
            pred, target = (torch.cat([x.flatten() for x in t]) for t in zip(*drawn, strict=True))
            draws.append(dense_score(key[2], pred, target))
        assert (got[key].ci_low, got[key].ci_high) == pytest.approx(interval(torch.tensor(draws), 0.95), rel=1e-5)
    assert all(r.ci_low <= r.ci_high for r in got.values())
    gaps = {(r.method, r.horizon, r.metric): r for r in records if r.metric.endswith(GAP_SUFFIX)}
    assert gaps.keys() == {
        ("halfway", h, k + GAP_SUFFIX) for h in (1, 2) for k in ("miou", "depth_rmse", "feat_loss", "feat_cos")
    }
    # halfway has a quarter of copy_last's squared error: three quarters of the gap to the oracle's 0
    assert all(gaps[("halfway", h, "feat_loss" + GAP_SUFFIX)].value == pytest.approx(0.75) for h in (1, 2))
