"""The curated Python API: the README's example runs as written, every public name resolves, and
importing the package or its rooms is cheap and leaves global state alone."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import deltaworld

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs():
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        exec(compile(readme_example(), str(README), "exec"), {})


@pytest.mark.parametrize("name", deltaworld.__all__)
def test_every_public_name_resolves(name):
    assert getattr(deltaworld, name) is not None
    assert name in dir(deltaworld)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        deltaworld.nope  # noqa: B018


def run_python(code: str, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=True
    )
    return proc.stdout.strip()


def test_import_is_lazy_and_figures_leave_the_backend_alone():
    loaded = "sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'matplotlib', 'hydra'})"
    heavy = run_python(f"import sys, deltaworld; print({loaded})")
    assert heavy == "[]"
    # a library import must not pick the matplotlib backend: the commands do (deltaworld.cli)
    backend = run_python(
        "import deltaworld.eval.figures, deltaworld.eval.codec, deltaworld.eval.benchmark, matplotlib;"
        "print(matplotlib.get_backend())",
        MPLBACKEND="pdf",
    )
    assert backend == "pdf"
