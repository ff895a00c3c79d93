"""The Typer application every command module registers on."""

from __future__ import annotations

import inspect
import math
import os
import typing

import typer
from typer.core import TyperCommand, TyperGroup

from boneseg import __version__
from boneseg.errors import UsageError, suggest


class _FlagsAsFlags:
    """Help shows a flag as a flag, without a ``<bool>`` value placeholder."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


class FiniteCommand(_FlagsAsFlags, TyperCommand):
    """A boneseg command: its float parameters refuse nan and ±inf (exit 2, naming the option), checked on
    the command-line text before any other check of the value."""

    def parse_args(self, ctx, args):
        floats = {name for name, hint in typing.get_type_hints(self.callback).items() if _has_float(hint)}
        given, _, _ = self.make_parser(ctx).parse_args(args=list(args))
        for param in self.get_params(ctx):
            values = given.get(param.name) if param.name in floats else None
            for text in values if isinstance(values, (list, tuple)) else [values]:
                if _non_finite(text):
                    raise UsageError(f"{max(param.opts, key=len)} {text}: must be a finite number")
        return super().parse_args(ctx, args)


def _has_float(hint) -> bool:
    return hint is float or any(_has_float(a) for a in typing.get_args(hint))


def _non_finite(text) -> bool:
    try:
        return not math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


WORKFLOW = (
    "synth", "eda", "split", "train", "predict", "export", "tta", "ensemble", "select", "pseudo", "oof", "audit",
    "analyze", "report", "check", "demo", "models",
)  # fmt: skip
"""The order `boneseg --help` lists the commands in: the workflow's, as the README's table."""


class _Group(_FlagsAsFlags, TyperGroup):
    """The command group: commands listed in `WORKFLOW` order; an unknown one is refused with the closest names."""

    def list_commands(self, ctx) -> list[str]:
        rank = {name: i for i, name in enumerate(WORKFLOW)}
        return sorted(super().list_commands(ctx), key=lambda name: (rank.get(name, len(rank)), name))

    def resolve_command(self, ctx, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            ctx.fail(f"no such command {name!r}{suggest(name, self.list_commands(ctx), 5)}")
        return super().resolve_command(ctx, args)


class _App(typer.Typer):
    """Every command registered here is a `FiniteCommand` (unless it names another class); its help is its
    docstring with each paragraph on one line, so help and the command list wrap it to the terminal, not
    at the source's line ends."""

    def command(self, *args, cls=None, **kwargs):
        register = super().command

        def decorator(f):
            text = kwargs.pop("help", None) or inspect.getdoc(f) or ""
            help_text = "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
            return register(*args, cls=cls or FiniteCommand, help=help_text, **kwargs)(f)

        return decorator


app = _App(
    name="boneseg",
    cls=_Group,
    help="Hand-bone X-ray segmentation: synthetic data, training, inference, TTA, ensembles and analysis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

state: dict[str, typing.Any] = {"debug": os.environ.get("BONESEG_DEBUG", "") not in ("", "0"), "command": None}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"boneseg {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (also BONESEG_DEBUG=1)."),
) -> None:
    """boneseg: hand-bone X-ray segmentation toolkit."""
    state["command"] = ctx.invoked_subcommand
    if debug:
        state["debug"] = True
