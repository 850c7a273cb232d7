"""A run folder holds one run: lock, config check, stale temporaries, resume from what loads."""

import subprocess
import sys
import textwrap

import pytest
import torch

from deltaworld.tokenizer.run_folder import (
    RunFolderError,
    RunFolderLock,
    check_config,
    clean_stale_temporaries,
    newest_loadable_checkpoint,
)


def test_lock_refuses_a_second_holder_and_a_dead_holder_leaves_it_free(tmp_path):
    with RunFolderLock(tmp_path):
        with pytest.raises(RunFolderError, match="in use by another training process"):
            RunFolderLock(tmp_path)
    RunFolderLock(tmp_path).release()  # released on exit
    # a holder killed with SIGKILL: the kernel drops its lock
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from deltaworld.tokenizer.run_folder import RunFolderLock
            lock = RunFolderLock({str(tmp_path)!r})
            print("held", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
        RunFolderLock(tmp_path)
    holder.kill()
    holder.wait()
    RunFolderLock(tmp_path).release()


def test_config_check_names_what_differs():
    stored = {"seed": 0, "tokenizer": {"depth": 2}, "trainer": {"max_steps": 10}, "resume": "auto"}
    check_config("run", {**stored, "trainer": {"max_steps": 20}, "resume": None}, stored)  # continuing is fine
    check_config("run", stored, None)  # a new folder
    with pytest.raises(RunFolderError, match=r"tokenizer.depth: 2 -> 4") as err:
        check_config("run", {**stored, "tokenizer": {"depth": 4}, "extra": 1}, stored)
    assert "extra: '<absent>' -> 1" in str(err.value)


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".tokenizer.safetensors.x1.tmp", tmp_path / "checkpoints" / ".last.ckpt.y2.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    keep = tmp_path / "checkpoints" / "last.ckpt"
    keep.write_bytes(b"x")
    assert sorted(clean_stale_temporaries(tmp_path)) == sorted(stale)
    assert keep.is_file() and not any(p.exists() for p in stale)


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path):
    def save(name: str, step: int) -> None:
        torch.save({"state_dict": {"w": torch.ones(3)}, "global_step": step}, tmp_path / name)

    assert newest_loadable_checkpoint(tmp_path / "missing") == (None, [])
    save("step0000002.ckpt", 2)
    save("step0000004.ckpt", 4)
    # a full disk: last.ckpt absent
    assert newest_loadable_checkpoint(tmp_path)[0].name == "step0000004.ckpt"
    # damaged last.ckpt and newest step checkpoint: both skipped, named
    (tmp_path / "last.ckpt").write_bytes(b"")
    data = (tmp_path / "step0000004.ckpt").read_bytes()
    (tmp_path / "step0000004.ckpt").write_bytes(data[: len(data) // 2])
    found, damaged = newest_loadable_checkpoint(tmp_path)
    assert found.name == "step0000002.ckpt"
    assert [p.name for p in damaged] == ["last.ckpt", "step0000004.ckpt"]


def test_training_refuses_a_held_folder_and_another_experiment_before_writing(tmp_path):
    from test_training import FAST

    from deltaworld.tokenizer.fit import run_training

    from conftest import compose_train

    run = tmp_path / "run"
    common = [*FAST, "trainer.max_steps=2", "callbacks.model_checkpoint.every_n_train_steps=1"]
    with RunFolderLock(run), pytest.raises(RunFolderError, match="in use"):
        run_training(compose_train(common, run))
    assert not (run / "config.yaml").exists()
    run_training(compose_train(common, run))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(RunFolderError, match=r"tokenizer.depth: 2 -> 1"):
        run_training(compose_train([*common, "tokenizer.depth=1"], run))
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # nothing of the first run was touched

    # a full disk left step checkpoints and no last.ckpt: resume=auto continues from the newest step
    (run / "checkpoints" / "last.ckpt").unlink()
    (run / "checkpoints" / ".last.ckpt.abc.tmp").write_bytes(b"partial")
    run_training(compose_train([*FAST, "trainer.max_steps=3", "callbacks.model_checkpoint.every_n_train_steps=1"], run))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (run / "checkpoints" / ".last.ckpt.abc.tmp").exists()

    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(RunFolderError, match=r"empty.ckpt does not load"):
        run_training(compose_train([*common, f"resume={empty}"], tmp_path / "other"))
    assert not (tmp_path / "other").exists()
