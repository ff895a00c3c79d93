"""`boneseg.cli.options`: the options many commands share are spelled once, and read the same in every command."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest
import typer

import boneseg.cli
from boneseg.cli import options
from boneseg.errors import UsageError

SHARED = {
    "--out": "out_option",
    "--force": "force_option",
    "--json": "json_option",
    "--threshold": "threshold_option",
    "--workers": "workers_option",
    "--images": "images_option",
    "--gt": "gt_option",
    "--splits": "splits_option",
    "--fold": "fold_option",
    "--vote": "vote_option",
}
# Commands whose option blocks are still spelled out in their module (moved with their own rework).
PENDING: set[str] = set()


def test_shared_options_are_spelled_once():
    folder = Path(boneseg.cli.__file__).parent
    found = []
    for path in sorted(folder.glob("*_cmd.py")):
        if path.name in PENDING:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Option":
                flags = {a.value for a in node.args[1:] if isinstance(a, ast.Constant)}
                found += [
                    f"{path.name}:{node.lineno} {flag} (use options.{SHARED[flag]})" for flag in flags & set(SHARED)
                ]
    assert not found, found
    for name in SHARED.values():
        assert callable(getattr(options, name)), name


def _options() -> dict[str, dict[str, click.Option]]:
    from boneseg.cli import app

    return {
        name: {
            p.opts[0] if p.opts[0].startswith("--") else p.opts[-1]: p
            for p in cmd.params
            if isinstance(p, click.Option)
        }
        for name, cmd in typer.main.get_command(app).commands.items()
    }


def test_shared_options_read_the_same_in_every_command():
    """The same short form and placeholder wherever a shared option appears, and a help text of its own."""
    short = {"--out": "-o", "--threshold": "-t", "--workers": "-j"}
    metavar = {"--threshold": "T|FILE.json", "--gt": "DATA", "--splits": "SPLITS.json"}
    for command, params in _options().items():
        for flag, param in params.items():
            if flag in short:
                assert short[flag] in param.opts, f"{command} {flag}: no {short[flag]}"
            if flag in metavar:
                assert param.metavar == metavar[flag], f"{command} {flag}: {param.metavar}"
            if flag in SHARED and not param.hidden:
                assert param.help, f"{command} {flag}: no help"
            if flag in ("--force", "--json"):
                assert param.is_flag and param.default is False, f"{command} {flag}"


def test_vote_choices_are_the_librarys():
    from boneseg.names import VOTES
    from boneseg.workflows import ensemble

    assert tuple(v.value for v in options.Vote) == VOTES and ensemble.VOTES is VOTES


@pytest.mark.parametrize("text", ["0", "2048x0", "32769", "2048x40000", "big"])
def test_a_size_is_checked_both_ways(text, tmp_path):
    """``--size N|HxW`` (check, ensemble): every side within the mask-side bounds, one line naming --size."""
    from util import run_cli

    with pytest.raises(UsageError, match="--size"):
        options.parse_size(text)
    (tmp_path / "a.csv").write_text("image_name,class,rle\n")
    code, err = run_cli("check", tmp_path / "a.csv", "--size", text)
    assert code == 2 and err.strip().startswith("Error: --size") and len(err.strip().splitlines()) == 1
