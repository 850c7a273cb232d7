"""The speed benchmarks of `deltaworld bench what=<name>`, by name. Kept apart from the benchmarks
themselves: their settings run in fresh processes that import only what they measure, so the
peak memory they report is their own."""

from collections.abc import Callable, Iterable

from deltaworld.data.bench import bench_data
from deltaworld.eval.bench import bench_tokenizer, bench_world
from deltaworld.eval.bench_codec import bench_codec

BENCHMARKS: dict[str, Callable[[], Iterable[str]]] = {
    "tokenizer": bench_tokenizer,
    "world": bench_world,
    "data": bench_data,
    "codec": bench_codec,
}


def run_bench(what: str) -> None:
    """Print the figures of benchmark `what`, line by line as they are measured."""
    if what not in BENCHMARKS:
        raise ValueError(f"deltaworld bench: what={what}; choose one of {', '.join(BENCHMARKS)}")
    for line in BENCHMARKS[what]():
        print(line, flush=True)
