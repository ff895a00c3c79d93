"""The Typer application every command module registers on."""
from __future__ import annotations

import os

import typer

from boneseg import __version__

app = typer.Typer(
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

