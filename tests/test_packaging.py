"""The distribution installs one top-level name, `deltaworld`, and no working directory shadows it."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "deltaworld", "tokenizer", "worldmodel", "data", "eval", "conf")
ROOMS = ("tokenizer", "worldmodel", "data", "eval", "conf")

# imports every room and composes the train config from the installed package data; prints where
# each room came from
PROBE = """
import importlib
from hydra import compose, initialize_config_module
for room in {rooms}:
    print(room, importlib.import_module(f"deltaworld.{{room}}").__file__)
with initialize_config_module(config_module="deltaworld.conf", version_base="1.3"):
    cfg = compose(config_name="train", overrides=["run_dir=.", "backbone=tiny", "tokenizer=tiny"])
print("target", cfg.module._target_)
"""


def decoy_folders(cwd: Path) -> None:
    """Unrelated `data/` and `eval/` packages in the working directory, which fail loudly if imported."""
    for name in ("data", "eval", "tokenizer"):
        (cwd / name).mkdir(parents=True)
        (cwd / name / "__init__.py").write_text(f"raise ImportError('the decoy {name}/ package was imported')\n")


def probe(cwd: Path, env_path: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if env_path is not None:
        env["PYTHONPATH"] = str(env_path)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(rooms=ROOMS)], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the build leaves nothing in the checkout)."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        (shutil.copytree(path, src / name, ignore=ignore) if path.is_dir() else shutil.copy(path, src / name))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
        check=True,
        capture_output=True,
    )
    (whl,) = dist.glob("deltaworld-*.whl")
    return whl


def test_wheel_holds_deltaworld_alone(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"deltaworld"}
    for path in (
        "deltaworld/tokenizer/deltatok.py",
        "deltaworld/data/sources.py",
        "deltaworld/conf/train.yaml",
        "deltaworld/conf/backbone/tiny.yaml",
        "deltaworld/conf/experiment/cpu_demo.yaml",
    ):
        assert path in names


def test_installed_wheel_ignores_working_directory_packages(wheel, tmp_path):
    target, cwd = tmp_path / "site", tmp_path / "work"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    decoy_folders(cwd)
    # the wheel's copy wins over the editable checkout that the test environment also has
    found = probe(cwd, env_path=target)
    for room in ROOMS:
        assert found[room].startswith(str(target / "deltaworld" / room))
    assert found["target"] == "deltaworld.tokenizer.module.TokenizerModule"


def test_editable_install_ignores_working_directory_packages(tmp_path):
    decoy_folders(tmp_path)
    found = probe(tmp_path)
    for room in ROOMS:
        assert Path(found[room]) == ROOT / room / "__init__.py"
