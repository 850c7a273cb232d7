"""The report's diagnostics: token-space baselines where the answer is known, the spread of sampled
hypotheses (none for a deterministic model), training curves from hand-made CSV logs, and the
benchmark's report carrying all three with the existing methods' numbers unchanged."""

import math
import re

import pytest
import torch
from test_report import RandomClips
from test_worldmodel import strengthen

from deltaworld.eval.benchmark import forecasting_methods, run_benchmark
from deltaworld.eval.bootstrap import GAP_SUFFIX
from deltaworld.eval.curves import read_curves, training_curves
from deltaworld.eval.forecast import evaluate_forecasts, labelled_batches, oracle, tokenizer_ceiling
from deltaworld.eval.heads import build_heads
from deltaworld.eval.metrics import SPREAD_METRICS, spread_metrics
from deltaworld.eval.records import read_metrics
from deltaworld.worldmodel.deltaworld import DeltaWorld
from deltaworld.worldmodel.sampling import (
    ForecastCase,
    Predictions,
    copy_last,
    extrapolate_token,
    repeat_token,
    token_forecaster,
    world_forecaster,
)
from deltaworld.worldmodel.spaces import DeltaTokens, PatchTokens

from conftest import make_deltatok

BASELINES = ("repeat_token", "extrapolate_token")


def linear_case(b: int = 2, context: int = 3, horizon: int = 2, n: int = 4, d: int = 5) -> ForecastCase:
    """Features (on a square grid of n patches) moving by a constant whole-number step per frame, so
    that extrapolating them is exact; a random black frame's features."""
    g = torch.Generator().manual_seed(0)
    start, step = torch.randint(-5, 5, (b, 1, n, d), generator=g), torch.randint(-3, 3, (b, 1, n, d), generator=g)
    feats = (start + step * torch.arange(context + horizon)[:, None, None]).float()  # (B, T, N, D)
    times = (0.1 * torch.arange(context + horizon)).expand(b, -1)
    return ForecastCase(
        horizon=horizon,
        grid=(math.isqrt(n), math.isqrt(n)),
        context_feats=feats[:, :context],
        context_times=times[:, :context],
        future_times=times[:, context:],
        future_feats=feats[:, context:],
        target_feats=feats[:, -1],
        black=torch.randn(n, d, generator=g),
    )


def tiny_worlds(token_dim: int) -> tuple[DeltaWorld, DeltaWorld]:
    """A sampling and a deterministic world model, with O(1) weights so the noise visibly matters."""
    kw = {"token_dim": token_dim, "dim": 32, "depth": 1, "num_heads": 2, "rope_dim": 12}
    torch.manual_seed(0)
    return strengthen(DeltaWorld(**kw)).eval(), strengthen(DeltaWorld(**kw, deterministic=True)).eval()


def test_token_baselines_repeat_and_extrapolate_the_last_tokens():
    tokens = 3 + torch.arange(5.0)[None, :, None, None] * torch.tensor([1.0, -2.0, 0.5])  # (1, 5, 1, 3) linear
    context, times, future = tokens[:, :2], torch.tensor([[0.0, 0.1]]), torch.tensor([[0.2, 0.3, 0.4]])
    assert torch.equal(extrapolate_token(context, times, future), tokens[:, None, 2:])
    assert torch.equal(repeat_token(context, times, future), tokens[:, None, 1:2].expand(1, 1, 3, 1, 3))
    with pytest.raises(ValueError, match="at least 2 context frames"):
        extrapolate_token(tokens[:, :1], times[:, :1], future)

    # patch tokens are the features: extrapolating linear motion hits the target, repeating is copy_last
    case = linear_case()
    space = PatchTokens()
    assert torch.equal(token_forecaster(extrapolate_token, space, name="x")(case)["x"], case.target_feats)
    assert torch.equal(token_forecaster(repeat_token, space, name="r")(case)["r"], copy_last(case)["copy_last"])


def test_token_baselines_decode_delta_tokens_closed_loop_from_the_last_context_frame(tiny_backbone):
    deltatok = strengthen(make_deltatok(tiny_backbone)).eval()
    case = linear_case(context=3, horizon=2, n=16, d=tiny_backbone.dim)
    with torch.no_grad():
        context = deltatok.tokenize(case.context_feats, (4, 4), case.black)  # (B, 3, K, C), the first against black
        last, change = context[:, -1:], context[:, -1:] - context[:, -2:-1]
        expected = {
            "repeat_token": deltatok.decode_rollout(torch.cat([last, last], 1), (4, 4), case.context_feats[:, -1]),
            "extrapolate_token": deltatok.decode_rollout(
                torch.cat([last + change, last + 2 * change], 1), (4, 4), case.context_feats[:, -1]
            ),
        }
    space = DeltaTokens(deltatok)
    for name, predict in (("repeat_token", repeat_token), ("extrapolate_token", extrapolate_token)):
        out = token_forecaster(predict, space, name=name)(case)
        assert set(out) == {name} and not isinstance(out, Predictions)  # one future: nothing to choose from
        torch.testing.assert_close(out[name], expected[name][:, -1])


def test_hypothesis_spread_is_zero_for_a_deterministic_model_and_positive_for_samples(tiny_backbone):
    deltatok = strengthen(make_deltatok(tiny_backbone)).eval()
    space = DeltaTokens(deltatok)
    sampling, deterministic = tiny_worlds(deltatok.token_dim)
    case = linear_case(n=16, d=tiny_backbone.dim)
    spread = {}
    for name, world in (("sampling", sampling), ("deterministic", deterministic)):
        out = world_forecaster(world, space, samples=4, name=name, generator=torch.Generator().manual_seed(0))(case)
        hyps = out.hypotheses[name]
        assert hyps.tokens.shape == (2, 4, 1, deltatok.token_dim) and hyps.feats.shape == (2, 4, 16, tiny_backbone.dim)
        values, sums = spread_metrics(hyps.tokens, hyps.feats)
        assert set(values) == set(SPREAD_METRICS) and all(s.shape == (2, 2) for s in sums.values())
        spread[name] = values
    # one learned query: M copies of one future (decoded in one batch, its rows may round apart)
    assert spread["deterministic"]["hypothesis_spread_token"] == 0
    assert spread["deterministic"]["hypothesis_spread_feat"] < 1e-6
    assert all(v > 1e-3 for v in spread["sampling"].values())


def write_log(path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


def lightning_log(run, version: str, steps: range, *, best_of_n: bool = True, cut: bool = False) -> None:
    """A CSVLogger file as Lightning writes it: learning-rate rows with empty losses between the
    loss rows; `cut` ends it on a row cut short in a number, as a killed run can leave it."""
    header = "epoch,lr-AdamW/pg1,step,train/loss" + (
        ",train/loss_best_of_n,train/loss_mean_hypothesis" if best_of_n else ""
    )
    rows = []
    for s in steps:
        rows.append(f",1e-4,{s}" + ",," * best_of_n + ",")
        losses = [1 / (s + 1), 1 / (s + 1), 2 / (s + 1)] if best_of_n else [1.5 / (s + 1)]
        rows.append(f"0,,{s}," + ",".join(str(v) for v in losses))
    write_log(run / "csv" / version / "metrics.csv", header, [*rows, "0,,9,0.2e"] if cut else rows)


def test_training_curves_read_every_launch_and_note_the_runs_without_a_log(tmp_path):
    world, deterministic = tmp_path / "world", tmp_path / "deterministic"
    lightning_log(world, "20260101-000000-000000", range(3))
    lightning_log(world, "20260101-010000-000000", range(3, 5), cut=True)  # resumed, then killed
    lightning_log(deterministic, "20260101-000000-000000", range(4), best_of_n=False)
    empty = tmp_path / "empty" / "csv" / "20260101-000000-000000" / "metrics.csv"
    write_log(empty, "epoch,step,train/loss", [])

    curves = read_curves(world)
    assert set(curves) == {"train/loss", "train/loss_best_of_n", "train/loss_mean_hypothesis"}
    assert curves["train/loss_mean_hypothesis"] == ([0, 1, 2, 3, 4], [2 / (s + 1) for s in range(5)])
    assert curves["train/loss"][0] == [0, 1, 2, 3, 4]  # the cut row's unreadable loss is left out
    assert set(read_curves(deterministic)) == {"train/loss"}
    assert read_curves(empty) == {} and read_curves(tmp_path / "nowhere") == {}

    runs = {"world": world, "deterministic": deterministic / "csv" / "20260101-000000-000000" / "metrics.csv"}
    figure, notes = training_curves(tmp_path / "curves.png", {**runs, "empty": empty, "gone": tmp_path / "nowhere"})
    assert figure.stat().st_size > 0
    assert len(notes) == 2 and "'empty'" in notes[0] and "has none" in notes[0] and "'gone'" in notes[1]
    figure, notes = training_curves(tmp_path / "none.png", {"gone": tmp_path / "nowhere"})
    assert figure is None and len(notes) == 1 and not (tmp_path / "none.png").exists()


def test_the_report_adds_token_baselines_spread_and_curves_and_keeps_the_other_numbers(tmp_path, tiny_backbone):
    deltatok = strengthen(make_deltatok(tiny_backbone)).eval()
    space = DeltaTokens(deltatok)
    sampling, deterministic = tiny_worlds(deltatok.token_dim)
    dataset = RandomClips(4)
    torch.manual_seed(0)
    heads = build_heads(in_dim=tiny_backbone.dim, num_classes=4, depth_range=dataset.depth_range).eval()
    lightning_log(tmp_path / "world", "20260101-000000-000000", range(3))
    methods = forecasting_methods(
        deltatok=deltatok, world=(space, sampling), deterministic=(space, deterministic), samples=3, seed=0
    )
    report, records = run_benchmark(
        backbone=tiny_backbone,
        heads=heads,
        dataset=dataset,
        methods=methods,
        context=3,
        horizons=[1, 2],
        batch_size=2,
        num_workers=0,
        out_dir=tmp_path / "eval",
        title="toy",
        world=(space, sampling),
        samples=3,
        figure_clips=2,
        training_runs={"world": tmp_path / "world", "deterministic": tmp_path / "deterministic"},
    )
    loaded = {(r.method, r.horizon, r.metric): r for r in read_metrics(tmp_path / "eval" / "metrics.json")}
    metrics = ("miou", "depth_rmse", "feat_loss", "feat_cos")
    wanted = {(m, h, k + s) for m in BASELINES for h in (1, 2) for k in metrics for s in ("", GAP_SUFFIX)}
    wanted |= {("deltaworld", h, k) for h in (1, 2) for k in SPREAD_METRICS}
    assert wanted <= loaded.keys()
    assert all(loaded[k].ci_low <= loaded[k].value <= loaded[k].ci_high for k in wanted if loaded[k].value is not None)
    assert all(loaded[("deltaworld", h, k)].value > 0 for h in (1, 2) for k in SPREAD_METRICS)
    assert not any(k[0] == "deterministic" and k[2] in SPREAD_METRICS for k in loaded)

    # the methods as they were before the diagnostics: every one of their numbers is unchanged
    before = evaluate_forecasts(
        backbone=tiny_backbone,
        batches=labelled_batches(dataset, batch_size=2, num_workers=0, shuffle=False, seed=0),
        methods=[
            oracle,
            copy_last,
            tokenizer_ceiling(deltatok),
            world_forecaster(sampling, space, samples=3, generator=torch.Generator().manual_seed(0)),
            world_forecaster(deterministic, space, samples=1, name="deterministic"),
        ],
        context=3,
        horizons=[1, 2],
        dataset=dataset.name,
        heads=heads,
        num_classes=4,
    )
    kept = [r for r in before if r.metric not in SPREAD_METRICS]
    assert kept and all(loaded[(r.method, r.horizon, r.metric)] == r for r in kept)

    text = report.read_text()
    values_table, rest = text.split("## Fraction of the copy_last -> oracle gap recovered")
    gap_table, rest = rest.split("## Hypothesis spread")
    assert all(f"| random | {m} |" in values_table and f"| random | {m} |" in gap_table for m in BASELINES)
    spread_table = [line for line in rest.splitlines() if line.startswith("|")]
    assert spread_table[0] == (
        "| dataset | method | hypothesis_spread_feat h=1 | hypothesis_spread_feat h=2 "
        "| hypothesis_spread_token h=1 | hypothesis_spread_token h=2 |"
    )
    assert re.fullmatch(r"\| random \| deltaworld \| [^*]+ \|", spread_table[2])  # a diagnostic: nothing in bold
    assert (tmp_path / "eval" / "training_curves.png").stat().st_size > 0 and "(training_curves.png)" in text
    assert "training curves: run 'deterministic'" in text
