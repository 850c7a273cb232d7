"""Fault injection: every command that reads user files, given missing, empty, truncated, random or
foreign files, ends in a line naming the file and writes nothing; training killed with SIGKILL at
checkpoint and export writes, or out of disk space, resumes to the losses of an uninterrupted run."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_training import FAST, losses
from test_world_training import WORLD_FAST

from deltaworld.cli import main as cli_main
from deltaworld.tokenizer.fit import run_training
from deltaworld.tokenizer.run_folder import RunFolderError

from conftest import compose_train

FAULTS = ("missing", "empty", "truncated", "random", "foreign")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A real tokenizer export (to truncate) and a foreign-kind file (valid safetensors, heads kind)."""
    root = tmp_path_factory.mktemp("exports")
    tokenizer = run_training(compose_train([*FAST, "trainer.max_steps=1"], root / "tokenizer"))
    foreign = root / "foreign.safetensors"
    save_file({"w": torch.zeros(4)}, str(foreign), metadata={"kind": json.dumps("heads"), "format_version": "1"})
    return tokenizer, foreign


def faulty(fault: str, folder, exports, suffix: str = ".safetensors"):
    """A file of the given fault, named after it."""
    path = folder / f"{fault}_file{suffix}"
    tokenizer, foreign = exports
    if fault == "empty":
        path.write_bytes(b"")
    elif fault == "truncated":
        data = tokenizer.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif fault == "random":
        path.write_bytes(os.urandom(4096))
    elif fault == "foreign":
        path.write_bytes(foreign.read_bytes())
    return path


# command line of each command with one user file, `{file}`, and an output folder, `{out}`
COMMANDS = {
    "sample": ["sample", "world_ckpt={file}", "out_dir={out}"],
    "eval": ["eval", "world_ckpt={file}", "heads={file}", "out_dir={out}", "num_workers=0"],
    "heads": ["heads", "backbone_from={file}", "out_dir={out}", "num_workers=0"],
    "train_world": ["train", *WORLD_FAST, "tokenizer_ckpt={file}", "run_dir={out}"],
    "train_init_from": ["train", *FAST, "init_from={file}", "run_dir={out}"],
    "codec_encode": ["codec", "encode", "input={video}", "output={out}/x.dtok", "ckpt={file}"],
    "codec_decode": ["codec", "decode", "input={file}", "output={out}/x.mp4"],
    "import_official": ["import-official", "tokenizer_ckpt={file}", "out={out}"],
}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from test_data import grey_frames

    from deltaworld.data.video import write_video

    path = tmp_path_factory.mktemp("video") / "in.mp4"
    write_video(path, grey_frames(4, 16, 16), fps=10)
    return path


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_files_end_in_one_line_naming_them(tmp_path, capsys, monkeypatch, exports, video, command, fault):
    monkeypatch.delenv("DELTAWORLD_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    suffix = {"codec_decode": ".dtok", "import_official": ".bin", "train_init_from": ".ckpt"}.get(
        command, ".safetensors"
    )
    path = faulty(fault, tmp_path, exports, suffix)
    out = tmp_path / "out"
    args = [a.format(file=path, out=out, video=video) for a in COMMANDS[command]]
    with pytest.raises(SystemExit) as exit_:
        cli_main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-2000:]
    assert path.name in err and "Traceback" not in err, err[-2000:]
    written = (
        [p for p in out.rglob("*") if p.is_file() and p.name not in (".lock", "config.yaml")] if out.exists() else []
    )
    assert not written, written


def test_shards_of_a_missing_folder_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["shards", f"input={tmp_path / 'nowhere'}", f"output={tmp_path / 'out'}"])
    assert exit_.value.code == 2 and "nowhere" in capsys.readouterr().err


# runs `deltaworld train` in this process with one fault injected into the framework's writes:
# SIGKILL before the N-th atomic rename (a checkpoint or the export left as a temporary file), or
# ENOSPC on the N-th write
INJECT = """
import errno, os, signal, sys
import deltaworld.tokenizer.checkpoint as checkpoint
mode, at = sys.argv[1], int(sys.argv[2])
calls = {{"replace": 0, "fsync": 0}}
real_replace, real_fsync = os.replace, os.fsync

def replace(src, dst):
    calls["replace"] += 1
    if mode == "kill" and calls["replace"] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

def fsync(fd):
    calls["fsync"] += 1
    if mode == "enospc" and calls["fsync"] == at:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_fsync(fd)

checkpoint.os.replace, checkpoint.os.fsync = replace, fsync
if mode == "timer":  # SIGKILL at a moment drawn by the test: anywhere in start-up, training or a write
    import threading
    threading.Timer(at / 1000, os.kill, (os.getpid(), signal.SIGKILL)).start()
from deltaworld.cli import main
sys.exit(main(["train", *{overrides!r}]))
"""


def train_with_fault(overrides: list[str], mode: str, at: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    script = textwrap.dedent(INJECT.format(overrides=overrides))
    return subprocess.run(
        [sys.executable, "-c", script, mode, str(at)], env=env, capture_output=True, text=True, timeout=600
    )


# kill: SIGKILL before the N-th rename (1: config.yaml, then checkpoints, last: the export); enospc: the
# N-th fsync fails; timer: SIGKILL after a random number of milliseconds (seeded, so a failure replays)
TIMER_MS = [int(ms) for ms in np.random.default_rng(19).integers(3000, 9000, size=2)]
FAULT_CASES = [("kill", 1), ("kill", 4), ("kill", 7), ("enospc", 3), ("enospc", 7), *(("timer", ms) for ms in TIMER_MS)]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "at"), FAULT_CASES)
def test_killed_or_full_disk_training_resumes_to_the_same_losses(tmp_path, mode, at):
    # 6 steps, a step checkpoint and last.ckpt every 2 steps, then the export: 8 atomic writes after config.yaml
    common = [
        *FAST,
        "trainer.max_steps=6",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "trainer.val_check_interval=100",
    ]
    straight = tmp_path / "straight"
    run_training(compose_train(common, straight))
    run = tmp_path / "run"
    faulted = train_with_fault([*common, f"run_dir={run}"], mode, at)
    if mode == "kill":
        assert faulted.returncode == -9
    elif mode == "timer":
        assert faulted.returncode in (-9, 0)  # a late timer may find the run already finished
    else:
        assert faulted.returncode == 2 and "No space left on device" in faulted.stderr
        assert str(run) in faulted.stderr  # the message names the file it could not write
    before = (
        {p.name: p.read_bytes() for p in (run / "checkpoints").glob("step*.ckpt")}
        if (run / "checkpoints").exists()
        else {}
    )
    export = run_training(compose_train(common, run))  # the same command again: resume=auto
    assert export.is_file()
    for name, data in before.items():  # nothing an earlier run wrote was lost or overwritten
        assert (run / "checkpoints" / name).read_bytes() == data
    assert not list(run.rglob(".*.tmp"))
    # the losses agree step by step; a crash inside the checkpoint write of step s can only cost
    # the log row of step s - 1 (Lightning logs a step after its checkpoint callbacks)
    a, b = losses(straight), losses(run)
    assert sorted(a) == list(range(6)) and len(set(a) - set(b)) <= 1
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    wa = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_a_second_training_on_a_running_folder_is_refused_and_nothing_is_lost(tmp_path):
    run = tmp_path / "run"
    common = [*FAST, "trainer.max_steps=400", "callbacks.model_checkpoint.every_n_train_steps=1000"]
    first = subprocess.Popen(
        [sys.executable, "-m", "deltaworld.cli", "train", *common, f"run_dir={run}"],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):  # the first run holds the folder once its config is written
            if (run / "config.yaml").is_file() or first.poll() is not None:
                break
            time.sleep(0.1)
        config = (run / "config.yaml").read_bytes()
        with pytest.raises(RunFolderError, match=f"pid {first.pid}"):
            run_training(compose_train(common, run))
        assert (run / "config.yaml").read_bytes() == config
    finally:
        first.kill()
        first.wait()
