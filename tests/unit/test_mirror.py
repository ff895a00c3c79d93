"""Tests mirror the package file by file: the tests of `src/boneseg/<pkg>/<module>.py` are in
`tests/unit/<pkg>/test_<module>.py` (formats-level modules: `tests/unit/test_<module>.py`), so a reader finds
them by the module's path. Checks of the project as a whole are listed here, each with what it checks."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "boneseg"
UNIT = ROOT / "tests" / "unit"

# Project-wide checks: they test no single module, so they stay in tests/unit/ beside the formats modules' tests.
PROJECT_WIDE = {
    "test_command_defaults.py": "every command's options against its library entry point's signature",
    "test_documented_commands.py": "every `boneseg ...` line in the docs parses against the CLI",
    "test_fuzz.py": "the parsers of several modules (submission CSV, labels) under fuzzed input",
    "test_gpu_suite.py": "benchmarks/gpu_suite.py, a script outside the package",
    "test_layers.py": "the import layers of the whole package",
    "test_mirror.py": "this rule",
    "test_one_home.py": "one home per rule, across the modules that use it",
    "test_openmp_spin.py": "the environment the package sets when it is imported",
    "test_resources.py": "resource errors and files with two answers, across commands",
    "test_startup.py": "what the command line imports when it starts",
    "test_tooling.py": "mypy and ruff over the tree",
    "test_trust.py": "how every module loads model files",
}


def strays(unit: Path, src: Path, project_wide) -> list[str]:
    """Test files under `unit` that name no module at the same relative path under `src` (nor are listed)."""
    found = []
    for path in sorted(unit.rglob("test_*.py")):
        rel = path.relative_to(unit)
        if rel.parent == Path(".") and rel.name in project_wide:
            continue
        if not (src / rel.parent / rel.name.removeprefix("test_")).is_file():
            found.append(str(rel))
    return found


def test_every_unit_test_file_names_its_module():
    assert not strays(UNIT, SRC, PROJECT_WIDE), (
        "a test file names no module at its path: rename it after the module it tests, or list it in PROJECT_WIDE"
    )


def test_the_project_wide_files_exist_and_name_no_module():
    for name in PROJECT_WIDE:
        assert (UNIT / name).is_file(), f"PROJECT_WIDE lists {name}, which is gone"
        assert not (SRC / name.removeprefix("test_")).exists(), f"{name} tests a module: it is no project-wide check"


def test_the_check_sees_a_stray_at_any_depth(tmp_path):
    (tmp_path / "src" / "data").mkdir(parents=True)
    (tmp_path / "src" / "data" / "layout.py").touch()
    (tmp_path / "src" / "io.py").touch()
    (tmp_path / "unit" / "data").mkdir(parents=True)
    for name in ["data/test_layout.py", "data/test_data_layer.py", "test_io.py", "test_layout.py", "test_all.py"]:
        (tmp_path / "unit" / name).touch()
    assert strays(tmp_path / "unit", tmp_path / "src", {"test_all.py": "listed"}) == [
        "data/test_data_layer.py",
        "test_layout.py",
    ]
