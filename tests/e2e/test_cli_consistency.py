"""Rules every command keeps, checked by walking the Typer app, and the streams a pipe sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer
from util import cli

import boneseg
from boneseg import CLASSES
from boneseg.cli import app

COMMANDS = typer.main.get_command(app).commands

# An option of this long name always has this short form (and metavar, where given).
SHORT = {"--out": "-o", "--model": "-m", "--threshold": "-t", "--workers": "-j", "--batch-size": "-b"}
METAVAR = {"--threshold": "T|FILE.json"}


def test_shared_options_are_spelled_alike():
    odd = []
    for name, command in sorted(COMMANDS.items()):
        for param in command.params:
            for long, short in SHORT.items():
                if long in param.opts and short not in param.opts:
                    odd.append(f"{name} {long}: no {short}")
                if long in param.opts and long in METAVAR and param.metavar != METAVAR[long]:
                    odd.append(f"{name} {long}: metavar {param.metavar!r}, not {METAVAR[long]!r}")
    assert odd == []


def test_every_command_that_writes_has_force():
    writers = {
        name
        for name, command in COMMANDS.items()
        for param in command.params
        if param.name in ("out", "output", "thresholds_out") and not param.hidden
    }
    assert {"analyze", "demo", "predict", "report", "synth", "tta"} <= writers
    assert [n for n in sorted(writers) if "force" not in {p.name for p in COMMANDS[n].params}] == []


def _csv(path: Path, images: int) -> Path:
    path.write_text("image_name,class,rle\n" + "".join(f"i{k:05d}.png,{c},\n" for k in range(images) for c in CLASSES))
    return path


def test_transient_progress_leaves_no_blank_line_in_a_pipe(tmp_path, capsys):
    inputs = [_csv(tmp_path / f"{k}.csv", 2) for k in range(3)]
    code, _, err = cli(capsys, "ensemble", *inputs, "-o", tmp_path / "e.csv")
    assert code == 0 and err.startswith("hard vote over 3 inputs") and "\n\n" not in err, repr(err)


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`boneseg … | head -1`: no `Error: Broken pipe`, no traceback; exit 1 as Python and rich do."""
    inputs = [_csv(tmp_path / f"{k}.csv", 1500) for k in range(3)]  # ~1.4 MB out: far more than a pipe holds
    env = dict(os.environ, PYTHONPATH=str(Path(boneseg.__file__).parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "boneseg", "ensemble", *map(str, inputs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout.readline() == "image_name,class,rle\n"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and err == "", err


def test_help_paragraphs_wrap_to_the_terminal():
    """A docstring's line ends are not kept: `boneseg --help` lists each command's help wrapped to the width."""
    broken = [n for n, c in sorted(COMMANDS.items()) if any("\n" in p for p in (c.help or "").split("\n\n"))]
    assert broken == []


def test_help_lists_every_command_in_the_readmes_order():
    """`boneseg --help` lists the commands in workflow order, the README's table lists them all in that order."""
    import re

    group = typer.main.get_command(app)
    listed = group.list_commands(typer.Context(group))
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = re.findall(r"^\| `(\w+)` \|", readme, flags=re.M)
    assert listed == table and sorted(listed) == sorted(COMMANDS)
