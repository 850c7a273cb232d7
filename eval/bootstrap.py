"""Paired bootstrap over clips: an interval for every metric and for the fraction of the
copy_last -> oracle gap that each method recovers.

A resample draws the evaluation's clips with replacement and recomputes each metric from the summed
statistics of the drawn clips (`metrics.ClipStats`), exactly as the full set computes it: mIoU from
the summed confusion matrix, depth RMSE from the summed squared errors and pixel count. Every
method, horizon and metric sees the same draws (paired), so a difference between methods, or a gap
fraction, varies only by what differs between them, not by both methods' clip-to-clip noise.
"""

import math
from dataclasses import replace

import torch

from deltaworld.eval.metrics import ClipStats, Key
from deltaworld.eval.records import Record

RESAMPLES, LEVEL = 1000, 0.95
GAP_SUFFIX = "_gap_recovered"  # metric name of a gap fraction: "miou_gap_recovered"
BOUNDS = ("copy_last", "oracle")  # the gap runs from the lower bound to the upper one
GAP_EPS = 1e-9  # bounds closer than this leave no gap to recover


def key(record: Record) -> Key:
    return record.method, record.horizon, record.metric


def resample_weights(num_clips: int, resamples: int, seed: int) -> torch.Tensor:
    """(R, num_clips) float64: how many times each clip is drawn in each of R resamples of num_clips clips."""
    draws = torch.randint(num_clips, (resamples, num_clips), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(resamples, num_clips, dtype=torch.float64)
    return counts.scatter_add_(1, draws, torch.ones(draws.shape, dtype=torch.float64))


def interval(draws: torch.Tensor, level: float) -> tuple[float | None, float | None]:
    """Percentile interval of resampled values (R,), over the resamples where they are defined."""
    tail = (1 - level) / 2
    low, high = torch.nanquantile(draws.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return (None, None) if math.isnan(low) else (low, high)


def gap_recovered(value: torch.Tensor, copy_last: torch.Tensor, oracle: torch.Tensor) -> torch.Tensor:
    """The fraction of the copy_last -> oracle gap that `value` recovers: 0 at copy_last, 1 at the
    oracle, for higher- and lower-is-better metrics alike (numerator and denominator change sign
    together); NaN where the bounds (nearly) coincide."""
    gap = oracle - copy_last
    return torch.where(gap.abs() < GAP_EPS, torch.nan, (value - copy_last) / gap)


def aligned(value: float, draws: torch.Tensor) -> torch.Tensor:
    """The resampled values draws[1:], moved by value - draws[0], where draws[0] is the full set
    recomputed from the per-clip statistics: the value and that recomputation differ by float
    rounding only (float32 running sums in batch order, float64 clip sums), which must not set the
    interval beside its value."""
    return draws[1:] + (value - draws[0])


def gap_records(records: list[Record], draws: dict[Key, torch.Tensor], level: float) -> list[Record]:
    """Per metric and horizon where both bounds were scored: every other method's gap fraction,
    with its interval from the same resamples (`draws`: (1 + R,) per key, the full set first)."""
    scored = {key(r): r.value for r in records}
    out = []
    for r in records:
        bounds = [(m, r.horizon, r.metric) for m in BOUNDS]
        if r.method in BOUNDS or not all(k in scored for k in bounds):
            continue
        keys = [key(r), *bounds]
        fraction = gap_recovered(*torch.tensor([scored[k] for k in keys], dtype=torch.float64)).item()
        if math.isnan(fraction):
            out.append(Record(r.dataset, r.method, r.horizon, r.metric + GAP_SUFFIX, None))
            continue
        low, high = interval(aligned(fraction, gap_recovered(*(draws[k] for k in keys))), level)
        out.append(Record(r.dataset, r.method, r.horizon, r.metric + GAP_SUFFIX, fraction, low, high))
    return out


def bootstrap_records(
    records: list[Record], stats: ClipStats, *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> list[Record]:
    """`records` (each with its per-clip statistics in `stats`) with their `level` intervals, then
    the gap fractions (metric `<metric>_gap_recovered`) with theirs. The values stay as given."""
    full = torch.ones(1, stats.num_clips)
    weights = torch.cat([full, resample_weights(stats.num_clips, resamples, seed)])  # (1 + R, clips), one for all
    draws = {key(r): stats.metric(key(r), weights) for r in records}  # (1 + R,) each
    out = []
    for r in records:
        low, high = interval(aligned(r.value, draws[key(r)]), level)
        out.append(replace(r, ci_low=low, ci_high=high))
    return out + gap_records(records, draws, level)
