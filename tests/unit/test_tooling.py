"""Static checks run as tests: mypy over the package, with the [tool.mypy] config of pyproject.toml."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_passes():
    pytest.importorskip("mypy")
    result = subprocess.run([sys.executable, "-m", "mypy", "src/boneseg"], cwd=ROOT, capture_output=True, check=False,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
