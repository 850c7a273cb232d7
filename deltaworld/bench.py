"""`deltaworld bench <what>`: print speed/memory figures."""

import sys

from deltaworld.data.bench import bench_data
from deltaworld.eval.bench import bench_tokenizer, bench_world
from deltaworld.eval.bench_codec import bench_codec

BENCHMARKS = {"tokenizer": bench_tokenizer, "world": bench_world, "data": bench_data, "codec": bench_codec}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in BENCHMARKS:
        print(f"usage: deltaworld bench {{{','.join(BENCHMARKS)}}}", file=sys.stderr)
        sys.exit(2)
    for line in BENCHMARKS[args[0]]():
        print(line, flush=True)


if __name__ == "__main__":
    main()
