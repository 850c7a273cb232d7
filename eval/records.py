"""Tidy metric records: every evaluation writes a list of {dataset, method, horizon, metric, value},
with a confidence interval [ci_low, ci_high] where the evaluation resampled its clips."""

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from deltaworld.tokenizer.checkpoint import atomic_write_text


@dataclass(frozen=True)
class Record:
    dataset: str
    method: str
    horizon: int
    metric: str
    value: float | None  # None: undefined (a gap fraction where the two bounds coincide)
    ci_low: float | None = None
    ci_high: float | None = None


class MeanAccumulator:
    """Sample-weighted running means keyed by (method, horizon, metric)."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, int, str], float] = defaultdict(float)
        self.counts: dict[tuple[str, int, str], int] = defaultdict(int)

    def add(self, method: str, horizon: int, metric: str, value: float, count: int) -> None:
        key = (method, horizon, metric)
        self.sums[key] += float(value) * count
        self.counts[key] += count

    def records(self, dataset: str) -> list[Record]:
        return [Record(dataset, m, h, k, self.sums[(m, h, k)] / self.counts[(m, h, k)]) for (m, h, k) in self.sums]


def write_metrics(records: list[Record], path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps([asdict(r) for r in records], indent=1))
    return path


def read_metrics(path: str | Path) -> list[Record]:
    return [Record(**r) for r in json.loads(Path(path).read_text())]


METRIC_ORDER = ("miou", "depth_rmse", "feat_loss", "feat_cos")  # headline metrics first in tables


def format_cell(record: Record, fmt: str, bold: bool) -> str:
    """'0.5631 [0.541, 0.585]': the value (bold if best), then its interval where it has one."""
    if record.value is None:
        return "n/a"
    text = fmt.format(record.value)
    text = f"**{text}**" if bold else text
    if record.ci_low is not None and record.ci_high is not None:
        text += f" [{fmt.format(record.ci_low)}, {fmt.format(record.ci_high)}]"
    return text


def metrics_table(
    records: list[Record],
    *,
    lower_is_better: tuple[str, ...] = ("feat_loss", "depth_rmse"),
    fmt: str = "{:.4g}",
    bold_best: bool = True,
) -> str:
    """Markdown table: one row per (dataset, method), one column per (metric, horizon); best in bold
    where `bold_best` (a diagnostic has no better end)."""
    rank = {m: i for i, m in enumerate(METRIC_ORDER)}
    columns = sorted({(r.metric, r.horizon) for r in records}, key=lambda c: (rank.get(c[0], len(rank)), c[0], c[1]))
    rows = list(dict.fromkeys((r.dataset, r.method) for r in records))
    cell = {(r.dataset, r.method, r.metric, r.horizon): r for r in records}
    best = {}
    for dataset in {d for d, _ in rows}:
        for metric, horizon in columns:
            vals = [r.value for k, r in cell.items() if k[0] == dataset and k[2:] == (metric, horizon)]
            vals = [v for v in vals if v is not None]
            if vals:
                best[(dataset, metric, horizon)] = (min if metric in lower_is_better else max)(vals)
    header = "| dataset | method | " + " | ".join(f"{m} h={h}" for m, h in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for dataset, method in rows:
        cells = []
        for metric, horizon in columns:
            r = cell.get((dataset, method, metric, horizon))
            is_best = (
                bold_best and r is not None and r.value is not None and r.value == best.get((dataset, metric, horizon))
            )
            cells.append("" if r is None else format_cell(r, fmt, is_best))
        lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
