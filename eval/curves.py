"""Training curves of world-model runs, read from their CSV logs: Lightning's CSVLogger
(conf/logger/default.yaml) writes <run_dir>/csv/<version>/metrics.csv, one version folder per
launch, named by its start time."""

import csv
from collections.abc import Mapping
from pathlib import Path

from deltaworld.eval.figures import training_curves_plot

# the world module's training losses (worldmodel/module.py): the loss trained, and, with N > 1
# hypotheses, the best and the mean hypothesis of the scoring pass
TRAIN_SERIES = ("train/loss", "train/loss_best_of_n", "train/loss_mean_hypothesis")
CURVES_CAPTION = (
    "Training curves: the loss trained, and the best and the mean of the N hypotheses' losses "
    "(their gap is how much the hypotheses differ)"
)

Curve = tuple[list[int], list[float]]  # training steps, values


def log_files(source: str | Path) -> list[Path]:
    """A run's CSV logs, oldest launch first: `source` itself if a file, else every launch's
    metrics.csv in the run folder `source`."""
    source = Path(source)
    return [source] if source.is_file() else sorted(source.glob("csv/*/metrics.csv"))


def number(text: str | None) -> float | None:
    """A logged cell as a number; None where it is empty or unreadable (a row cut short by a crash)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_curves(source: str | Path, series: tuple[str, ...] = TRAIN_SERIES) -> dict[str, Curve]:
    """(steps, values) of each of `series` that a run logged, over all its launches in order; the
    series it never logged are left out."""
    curves: dict[str, Curve] = {name: ([], []) for name in series}
    for path in log_files(source):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                step = number(row.get("step"))
                for name in series:
                    value = number(row.get(name))
                    if step is not None and value is not None:
                        curves[name][0].append(int(step))
                        curves[name][1].append(value)
    return {name: curve for name, curve in curves.items() if curve[0]}


def training_curves(path: str | Path, runs: Mapping[str, str | Path]) -> tuple[Path | None, list[str]]:
    """Plot the training curves of `runs` (name -> run folder or CSV file) into `path`. Returns the
    figure, None when no run logged any of TRAIN_SERIES, and a note for each run that did not."""
    curves, notes = {}, []
    for run, source in runs.items():
        found = read_curves(source)
        if found:
            curves[run] = found
        else:
            why = "its CSV log has none of them" if log_files(source) else "no csv/<version>/metrics.csv there"
            notes.append(f"training curves: run '{run}' ({source}) has no {', '.join(TRAIN_SERIES)}: {why}")
    return (training_curves_plot(path, curves) if curves else None), notes
