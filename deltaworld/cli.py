"""`deltaworld <command> [hydra overrides]`: one console script, thin subcommands."""

import runpy
import sys

COMMANDS = {
    "train": ("deltaworld.train", "train a stage from Hydra configs (experiment=<preset>, -m to sweep)"),
    "demo": ("deltaworld.demo", "CPU end-to-end demo on synthetic labelled video; writes a report"),
    "sample": ("deltaworld.sample", "sample M futures of a clip from a world model: figures, tokens, diversity"),
    "heads": ("deltaworld.heads", "train the linear segmentation/depth heads on frozen features of a labelled set"),
    "eval": ("deltaworld.evaluate", "dense forecasting benchmark: metrics.json, report.md, figures"),
    "shards": ("deltaworld.shards", "pack a folder tree of videos into webdataset shards (resumable)"),
    "codec": ("deltaworld.codec", "pixel DeltaToken codec: deltaworld codec encode|decode IN OUT"),
    "import-official": ("deltaworld.import_official", "convert the reference implementation's released checkpoints"),
    "bench": ("deltaworld.bench", "print speed/memory figures: deltaworld bench tokenizer|world|data|codec"),
}


def usage() -> str:
    lines = ["usage: deltaworld <command> [hydra overrides ...]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`deltaworld <command> --help` shows the command's config groups and options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"deltaworld: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return 2
    # run the command module as __main__: Hydra names the job after it, and Lightning's DDP
    # launcher re-executes `python -m <__main__ module> <overrides>` for the other ranks
    sys.argv = [sys.argv[0], *rest]
    runpy.run_module(COMMANDS[command][0], run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
