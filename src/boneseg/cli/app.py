"""The Typer application every command module registers on."""

from __future__ import annotations

import enum
import functools
import inspect
import math
import os
import re
import types
import typing
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from boneseg import __version__
from boneseg.errors import UsageError, suggest

PANELS: dict[str, tuple[str, ...]] = {
    "Data": (
        "data", "gt", "fold", "folds", "splits", "pseudo", "exclude", "cache_dir", "skip_bad", "images",
    ),
    "Model": (
        "models", "weights", "arch", "encoder", "encoder_weights", "init_from", "size", "channels", "meta",
        "wrist", "wrist_margin", "wrist_model", "boundary_sharpen", "norm", "adapter_dim", "unfreeze",
    ),
    "Loss": ("loss", "deep_supervision", "meta_weight", "boundary_head", "distance_clip"),
    "Optimisation": (
        "epochs", "batch_size", "lr", "weight_decay", "optimizer", "scheduler", "warmup", "accumulate", "clip", "ema",
        "patience", "max_steps", "seed",
    ),
    "Augmentation": ("aug", "crop", "unify_hands"),
    "Test-time augmentation": ("tta", "policies", "scales", "sliding", "window", "overlap"),
    "Vote": ("vote", "min_votes", "per_class", "scores", "per_class_out"),
    "Masks": ("threshold", "search", "thresholds_out", "keep_largest", "min_area", "postprocess", "fit_postprocess"),
    "Validation and logging": ("val_every", "save_every", "log", "log_images", "tensorboard"),
    "Hardware": ("device", "amp", "amp_dtype", "channels_last", "compile", "workers", "dist_timeout"),
    "Run and output": (
        "config_file", "print_config", "dry_run", "resume", "out", "output", "save_probs", "as_json", "json_out",
        "force", "help",
    ),
}  # fmt: skip
"""Help panels, in the order help shows them, and the options (by parameter name) each holds: one option name
sits in the same panel in every command. A command with at least `PANELS_FROM` options shows them (options
named nowhere here go to the last panel); shorter ones keep a single Options panel."""
PANELS_FROM = 12
_PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}
_PANEL_OVERRIDES = {
    ("train", "size"): "Model",
    ("ensemble", "weights"): "Vote",
    ("ensemble", "size"): "Vote",
    ("predict", "batch_size"): "Hardware",
    ("tta", "batch_size"): "Hardware",
}
"""(command, parameter) -> panel where an option means something else in that command."""

_METAVARS: dict[type, str] = {int: "N", float: "X", str: "TEXT", Path: "PATH"}
_TEXT_METAVARS = {
    "size": "N|HxW", "weights": "W,W,…", "scales": "S,S,…", "policies": "P,P,…", "search": "LOW,HIGH",
    "tta": "POLICY", "device": "NAME", "fmt": "NAME", "stratify": "NAME", "postprocess": "auto|none|FILE",
    "out": "FILE",
}  # fmt: skip
"""The value placeholder help shows for an option of this type that names none of its own (text options:
by parameter name, else TEXT)."""


def _metavar(hint) -> str | None:
    """`_METAVARS`' name for a parameter's annotation (``list[X] | None`` as X; an Enum as ``a|b``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is list:
        hint = typing.get_args(hint)[0]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "|".join(str(m.value) for m in hint)
    return _METAVARS.get(hint)


class _ReadableHelp:
    """Help reads like the docs: a flag as a flag, without a value placeholder; a value as ``N``, ``X``,
    ``TEXT``, ``PATH`` (or the metavar the option names, e.g. ``FILE``, ``RUN``) rather than ``<int>`` or
    ``<list[Path]>``; an argument as its name alone (``DATA``, not ``{DATA}``); the options of a long command
    in `PANELS`."""

    _for_help = False

    def get_params(self, ctx):
        params = super().get_params(ctx)  # type: ignore[misc]
        callback = getattr(self, "callback", None)
        hints = typing.get_type_hints(callback) if callback is not None else {}
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
            elif param.metavar is None and param.param_type_name == "option":
                param.metavar = _metavar(hints.get(param.name))
                if param.metavar == "TEXT":
                    param.metavar = _TEXT_METAVARS.get(param.name, "TEXT")
            if param.param_type_name == "argument":
                if param.metavar is None:
                    param.metavar = (param.name or "").upper()
                param.display_type_rich = lambda ctx: None  # the name column already shows the metavar
        if self._for_help and sum(p.param_type_name == "option" for p in params) >= PANELS_FROM:
            order = list(PANELS)
            for param in params:
                if param.param_type_name == "option":
                    name = (getattr(self, "name", None) or "", param.name or "")
                    param.rich_help_panel = _PANEL_OVERRIDES.get(name, _PANEL_OF.get(param.name, order[-1]))
            params = sorted(
                params, key=lambda p: order.index(p.rich_help_panel) if p.param_type_name == "option" else -1
            )
        return params

    def format_help(self, ctx, formatter):
        self._for_help = True
        try:
            return super().format_help(ctx, formatter)  # type: ignore[misc]
        finally:
            self._for_help = False

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [re.sub(r"^\{(.*)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]  # type: ignore[misc]


class FiniteCommand(_ReadableHelp, TyperCommand):
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
    "synth", "eda", "split", "train", "predict", "postprocess", "masks", "export", "tta", "ensemble", "select",
    "distill", "pseudo", "oof", "calibrate", "audit", "analyze", "report", "check", "demo", "models",
)  # fmt: skip
"""The order `boneseg --help` lists the commands in: the workflow's, as the README's table."""


class _Group(_ReadableHelp, TyperGroup):
    """The command group: commands listed in `WORKFLOW` order; an unknown one is refused with the closest names."""

    def list_commands(self, ctx) -> list[str]:
        rank = {name: i for i, name in enumerate(WORKFLOW)}
        return sorted(super().list_commands(ctx), key=lambda name: (rank.get(name, len(rank)), name))

    def resolve_command(self, ctx, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            ctx.fail(f"no such command {name!r}{suggest(name, self.list_commands(ctx), 5)}")
        return super().resolve_command(ctx, args)


OUTPUT_PARAMS = ("out", "output", "output_alias", "save_probs", "thresholds_out", "per_class_out")
"""The parameter names of the commands' outputs: each one given is held (`boneseg.io.hold`) while the command
runs, so a second writer of it is refused at once."""


def _holding(f):
    """`f` holding every output it is given (on rank 0 only under torchrun: the other ranks write through it)."""

    @functools.wraps(f)
    def command(*args, **kwargs):
        from boneseg.io import hold

        rank0 = int(os.environ.get("RANK", "0") or 0) == 0
        outputs = [kwargs[k] for k in OUTPUT_PARAMS if rank0 and kwargs.get(k) is not None]
        with hold(*outputs):
            return f(*args, **kwargs)

    return command


class _App(typer.Typer):
    """Every command registered here is a `FiniteCommand` (unless it names another class) that holds its
    outputs while it runs (`OUTPUT_PARAMS`); its help is its docstring with each paragraph on one line, so
    help and the command list wrap it to the terminal, not at the source's line ends."""

    def command(self, *args, cls=None, **kwargs):
        register = super().command

        def decorator(f):
            text = kwargs.pop("help", None) or inspect.getdoc(f) or ""
            help_text = "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
            register(*args, cls=cls or FiniteCommand, help=help_text, **kwargs)(_holding(f))
            return f

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

state: dict[str, typing.Any] = {
    "debug": os.environ.get("BONESEG_DEBUG", "") not in ("", "0"),
    "command": None,
    "finished": None,  # the exit code once the command has finished
}


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
