"""One command-line convention: every command is a Hydra app taking key=value overrides, whose
`--help` shows its purpose, options and defaults; `deltaworld --help` lists the commands from one
table; a leading bare word is the action of the commands that have one."""

import subprocess
import sys

import pytest

from deltaworld.cli import COMMANDS, main
from deltaworld.eval import bench_commands

# every command's help in one process: a fresh interpreter per command would cost a torch import each
ALL_HELP = """
from deltaworld.cli import COMMANDS, main
for name in COMMANDS:
    print(f"=== {name}", flush=True)
    try:
        main([name, "--help"])
    except SystemExit:
        pass
"""
# a key each command's options list, with its default
OPTIONS = {
    "train": "export_name: tokenizer.safetensors",
    "demo": "backbone_stage:",
    "sample": "world_ckpt: ???",
    "heads": "backbone_from: null",
    "eval": "heads: ???",
    "shards": "format: video",
    "codec": "action: ???",
    "import-official": "out: ???",
    "bench": "what: ???",
    "plan": "world_ckpt: null",
}
COMPOSED = ("train", "demo", "heads", "eval", "import-official", "plan")  # commands composed from config groups


@pytest.fixture(scope="module")
def help_texts() -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", ALL_HELP], capture_output=True, text=True, check=True, timeout=300)
    out = proc.stdout
    return {block.split("\n", 1)[0]: block for block in out.split("=== ")[1:]}


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out and command.purpose in out for name, command in COMMANDS.items())
    assert main(["nope"]) == 2


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_shows_its_purpose_options_and_groups(help_texts, name):
    text = help_texts[name]
    assert f"deltaworld {name}: " in text  # the purpose line of the command's hydra.help.header
    assert "== Options (key=value), with their defaults ==" in text and OPTIONS[name] in text
    assert ("== Config groups (group=option) ==" in text and "experiment: cpu_demo" in text) == (name in COMPOSED)


def test_a_leading_word_is_the_action_and_argv_comes_back(monkeypatch, capsys):
    monkeypatch.setitem(bench_commands.BENCHMARKS, "codec", lambda: ["figure one", "figure two"])
    argv = list(sys.argv)
    assert main(["bench", "codec"]) == 0
    assert capsys.readouterr().out == "figure one\nfigure two\n"
    assert sys.argv == argv


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "what=nope"], "what=nope; choose one of tokenizer, world, data, codec"),
        (["codec", "encode", "input=a.mp4"], "action=encode needs output= ckpt="),
        (["codec", "play"], "action=play; choose encode, decode or eval"),
        (["import-official", "out=x"], "needs tokenizer_ckpt="),
    ],
)
def test_bad_options_are_refused_naming_them(monkeypatch, args, message):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the error itself, rather than Hydra's exit
    with pytest.raises(ValueError, match=message):
        main(args)
