"""Static checks run as tests, with the [tool.mypy] and [tool.ruff] config of pyproject.toml: mypy over the
package, ruff's lint rules and its formatting over the package, the tests and the benchmarks."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE = ["src", "tests", "benchmarks"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, check=False, text=True)


def test_mypy_passes():
    pytest.importorskip("mypy")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert settings["check_untyped_defs"] is True, "the bodies of unannotated functions are checked too"
    result = _run("mypy", "src/boneseg")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_and_format_pass():
    pytest.importorskip("ruff")
    lint = _run("ruff", "check", *CODE)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", *CODE)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
