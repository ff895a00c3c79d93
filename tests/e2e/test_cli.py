import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from boneseg import __version__
from boneseg.cli import app
from boneseg.submission import SubmissionWriter

COMMANDS = ["synth", "eda", "split", "train", "predict", "tta", "pseudo", "ensemble", "analyze", "check", "demo"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "boneseg", *args], capture_output=True, text=True)


def test_help_lists_every_command_and_version():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    for c in COMMANDS:
        assert c in res.output
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    for c in COMMANDS:
        assert CliRunner().invoke(app, [c, "--help"]).exit_code == 0, c


def test_help_keeps_the_documented_defaults():
    """Help texts pass through rich markup, where an unescaped ``[default: 1]`` would vanish."""
    import re

    for command, wanted in (("train", "[default: 1]"), ("demo", "[default: 1: the same Dice")):
        res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
        assert wanted in res.output, command
        assert not re.search(r"\w \.\s", res.output), command  # the gap a swallowed default leaves


def test_error_path_is_one_line_without_traceback(tmp_path):
    res = run("check", str(tmp_path / "missing.csv"))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"Error: {tmp_path / 'missing.csv'}: file not found"]
    assert "Traceback" not in res.stderr
    res = run("--debug", "check", str(tmp_path / "missing.csv"))
    assert "Traceback" in res.stderr and res.returncode == 1


def test_check_command(tmp_path):
    path = tmp_path / "sub.csv"
    with SubmissionWriter(path) as w:
        w.write_masks("a.png", np.random.default_rng(0).random((29, 16, 16)) > 0.5)
    assert run("check", str(path), "--size", "16").returncode == 0
    res = run("check", str(path), "--size", "8")
    assert res.returncode == 1 and "past the image" in res.stderr
    res = run("check", str(path), "--size", "abc")
    assert res.returncode == 2 and res.stderr.startswith("Error: --size 'abc'")
    res = run("check", str(path), "--size", "16", "--json")
    assert res.returncode == 0 and '"valid": true' in res.stdout


def test_paths_with_brackets_are_printed_as_they_are(tmp_path, monkeypatch):
    """Terminal output goes through rich; a path like runs/[exp1]/sub.csv must not be read as markup."""
    from rich.console import Console

    from boneseg.cli.output import table

    path = tmp_path / "[exp1]" / "sub[bold].csv"
    path.parent.mkdir()
    with SubmissionWriter(path) as w:
        w.write_masks("a[0].png", np.zeros((29, 16, 16), bool))
    res = run("check", str(path), "--size", "16")
    assert res.returncode == 0 and f"valid: {path}" in res.stderr.replace("\n", ""), res.stderr
    console = Console(record=True, width=200)
    console.print(table("scores of [bold]x", ["image", "Dice"], [["a[0].png", 0.5], ["[/b]", 1.0]]))
    text = console.export_text()
    assert "scores of [bold]x" in text and "a[0].png" in text and "[/b]" in text and "0.5000" in text

    from boneseg.cli import output

    recorder = Console(record=True, width=200, force_terminal=True)
    monkeypatch.setattr(output, "console", recorder)
    with output.progress() as bar:
        bar.add_task("predict [rank 0 of 2]", total=1, unit="img")
    assert "predict [rank 0 of 2]" in recorder.export_text()


def test_shared_option_parsers():
    import pytest

    from boneseg.cli.options import parse_floats, parse_size
    from boneseg.errors import UsageError

    assert parse_floats("0.5,0.3", "--weights") == [0.5, 0.3]
    assert parse_floats(["0.5, 0.3", "0.2"], "--weights") == [0.5, 0.3, 0.2]
    assert parse_floats(None, "--weights") is None and parse_floats([], "--weights") is None
    with pytest.raises(UsageError, match="--search must be comma-separated numbers: 'x'"):
        parse_floats("0.3,x", "--search")
    assert parse_size("2048") == (2048, 2048) and parse_size("1024x2048") == (1024, 2048)
    with pytest.raises(UsageError, match="--size '0'"):
        parse_size("0")
