"""The report at the end of every evaluation: metrics.json, report.md (the values, then the
fraction of the copy_last -> oracle gap each method recovers, then the spread of the sampled
hypotheses, all with their intervals), figures."""

from dataclasses import replace
from pathlib import Path

from deltaworld.eval.bootstrap import GAP_SUFFIX
from deltaworld.eval.metrics import SPREAD_METRICS
from deltaworld.eval.records import Record, metrics_table, write_metrics
from deltaworld.tokenizer.checkpoint import atomic_write_text

GAP_CAPTION = (
    "(value - copy_last) / (oracle - copy_last) per metric and horizon: 0% is copy_last (the lower bound), "
    "100% the oracle (the upper bound), for higher- and lower-is-better metrics alike; n/a where the two "
    "bounds coincide. Intervals from the same paired resamples as the values'."
)
SPREAD_CAPTION = (
    "Standard deviation across the M sampled hypotheses at the target frame, averaged over clips and over "
    "patches and channels (hypothesis_spread_feat, in feature units: compare the square root of feat_loss) or "
    "over tokens and channels (hypothesis_spread_token); 0 when every hypothesis is the same future."
)


def write_report(
    run_dir: str | Path,
    records: list[Record],
    *,
    title: str,
    figures: dict[str, Path] | None = None,
    notes: list[str] | None = None,
) -> Path:
    run_dir = Path(run_dir)
    write_metrics(records, run_dir / "metrics.json")
    spread = [r for r in records if r.metric in SPREAD_METRICS]
    values = [r for r in records if not r.metric.endswith(GAP_SUFFIX) and r.metric not in SPREAD_METRICS]
    gaps = [replace(r, metric=r.metric.removesuffix(GAP_SUFFIX)) for r in records if r.metric.endswith(GAP_SUFFIX)]
    lines = [f"# {title}", "", metrics_table(values), ""]
    if gaps:
        table = metrics_table(gaps, lower_is_better=(), fmt="{:.1%}")
        lines += ["## Fraction of the copy_last -> oracle gap recovered", "", GAP_CAPTION, "", table, ""]
    if spread:
        lines += ["## Hypothesis spread", "", SPREAD_CAPTION, "", metrics_table(spread, bold_best=False), ""]
    lines += [f"- {note}" for note in notes or []]
    for caption, path in (figures or {}).items():
        lines += ["", f"## {caption}", "", f"![{caption}]({Path(path).relative_to(run_dir)})"]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
