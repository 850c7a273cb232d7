"""`deltaworld bench <what>`: print speed/memory figures."""

import sys

from eval.bench import bench_tokenizer, bench_world

BENCHMARKS = {"tokenizer": bench_tokenizer, "world": bench_world}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in BENCHMARKS:
        print(f"usage: deltaworld bench {{{','.join(BENCHMARKS)}}}", file=sys.stderr)
        sys.exit(2)
    for line in BENCHMARKS[args[0]]():
        print(line, flush=True)


if __name__ == "__main__":
    main()
