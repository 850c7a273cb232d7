"""The report at the end of every evaluation: metrics.json, report.md, figures."""

from pathlib import Path

from deltaworld.eval.records import Record, metrics_table, write_metrics
from deltaworld.tokenizer.checkpoint import atomic_write_text


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
    lines = [f"# {title}", "", metrics_table(records), ""]
    lines += [f"- {note}" for note in notes or []]
    for caption, path in (figures or {}).items():
        lines += ["", f"## {caption}", "", f"![{caption}]({Path(path).relative_to(run_dir)})"]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
