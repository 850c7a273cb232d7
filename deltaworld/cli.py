"""`deltaworld <command> [hydra overrides]`: one console script, thin subcommands."""

import os
import runpy
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    purpose: str
    verb: str | None = None  # the key a leading bare word sets: `codec encode` = `codec action=encode`


COMMANDS = {
    "train": Command("deltaworld.train", "train a stage from Hydra configs (experiment=<preset>, -m to sweep)"),
    "demo": Command("deltaworld.demo", "CPU end-to-end demo on synthetic labelled video; writes a report"),
    "sample": Command("deltaworld.sample", "sample M futures of a clip from a world model: figures, tokens, diversity"),
    "plan": Command("deltaworld.plan", "plan actions toward a goal with an action world model; closed-loop benchmark"),
    "heads": Command("deltaworld.heads", "train the linear segmentation/depth heads on a labelled set's features"),
    "eval": Command("deltaworld.evaluate", "dense forecasting benchmark: metrics.json, report.md, figures"),
    "shards": Command("deltaworld.shards", "pack a folder tree of videos into webdataset shards (resumable)"),
    "codec": Command("deltaworld.codec", "pixel DeltaToken video codec: codec encode|decode|eval key=...", "action"),
    "import-official": Command("deltaworld.import_official", "convert the reference implementation's released models"),
    "bench": Command("deltaworld.bench", "print speed/memory figures: bench tokenizer|world|data|codec", "what"),
}


def usage() -> str:
    lines = ["usage: deltaworld <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<16} {command.purpose}" for name, command in COMMANDS.items()]
    lines += ["", "`deltaworld <command> --help` lists the command's options, their defaults and its config groups."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"deltaworld: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    if command.verb and rest and "=" not in rest[0] and not rest[0].startswith("-"):
        rest = [f"{command.verb}={rest[0]}", *rest[1:]]
    # figures are files: the headless backend, chosen here so that importing the library changes nothing
    os.environ.setdefault("MPLBACKEND", "Agg")
    # run the command module as __main__: Hydra names the job after it, and Lightning's DDP
    # launcher re-executes `python -m <__main__ module> <overrides>` for the other ranks
    saved, sys.argv = sys.argv, [sys.argv[0], *rest]
    try:
        runpy.run_module(command.module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved  # a caller in the same process (a test) gets its own back
    return 0


if __name__ == "__main__":
    sys.exit(main())
