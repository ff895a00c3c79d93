"""The Typer application every command module registers on."""
from __future__ import annotations

import math
import os

import typer
from typer.core import TyperCommand

from boneseg import __version__
from boneseg.errors import UsageError


class FiniteCommand(TyperCommand):
    """A command that refuses nan and ±inf in every number it parses (exit 2, naming the option)."""

    def parse_args(self, ctx, args):
        rest = super().parse_args(ctx, args)
        for param in self.get_params(ctx):
            value = ctx.params.get(param.name)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise UsageError(f"{max(param.opts, key=len)} {v}: must be a finite number")
        return rest


class _App(typer.Typer):
    """Every command registered here is a `FiniteCommand` (unless it names another class)."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or FiniteCommand, **kwargs)


app = _App(
    name="boneseg",
    help="Hand-bone X-ray segmentation: synthetic data, training, inference, TTA, ensembles and analysis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

state = {"debug": os.environ.get("BONESEG_DEBUG", "") not in ("", "0")}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"boneseg {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (also BONESEG_DEBUG=1)."),
) -> None:
    """boneseg: hand-bone X-ray segmentation toolkit."""
    if debug:
        state["debug"] = True

