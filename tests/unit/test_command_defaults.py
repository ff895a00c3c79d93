"""Each command's library entry point is its typed config: the one source of its defaults.

For every command (but `train`: tests/unit/engine/test_train.py, and `distill`, train's options plus the
teacher's: tests/unit/workflows/test_distill.py), each option is a keyword of the library
function(s) the command calls, with the same default (None on the CLI is "not given": the library's default
applies, and a ``[default: X]`` in the help must name it), and each keyword is an option unless the tables
below say why not. A keyword whose default is an options object (`boneseg.inference.PredictOptions`) stands
for that object's fields, with the defaults of that instance.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from dataclasses import dataclass, field

import click
import pytest
import typer

from boneseg.cli.options import parse_floats, parse_size


@dataclass(frozen=True)
class Spec:
    functions: tuple[str, ...]  # "module:function" called by the command
    renamed: dict[str, str] = field(default_factory=dict)  # option -> keyword of another name
    negated: dict[str, str] = field(default_factory=dict)  # flag -> keyword it sets to its opposite
    command_only: frozenset[str] = frozenset()  # options the command handles itself
    api_only: frozenset[str] = frozenset()  # keywords only the Python API sets


# Keywords no command exposes: the CLI passes its own progress display.
API_ONLY = {"reporter"}
# A cache folder is the default one under the dataset root (`boneseg.data.masks.default_cache_dir`) on the CLI.
CACHE = frozenset({"cache_dir"})
# The same option on every command that has it, handled by the CLI.
JSON = frozenset({"json_out"})

SPECS = {
    "synth": Spec(("boneseg.data.synth:synthesize",)),
    "eda": Spec(
        ("boneseg.workflows.eda:run_eda", "boneseg.workflows.eda:write_eda"),
        renamed={"data": "root", "samples": "show", "out": "out_dir"},
        command_only=JSON,
        api_only=CACHE | {"report"},  # write_eda's input: run_eda's result
    ),
    "split": Spec(
        ("boneseg.data.split:make_splits", "boneseg.io:write_json"),
        renamed={"out": "path"},
        command_only=frozenset({"data"}),  # discovered into make_splits' `samples`
        api_only=frozenset({"samples", "obj"}),
    ),
    "predict": Spec(("boneseg.inference.run:predict",), renamed={"out": "output", "postprocess": "postprocess_rules"}),
    "tta": Spec(
        ("boneseg.workflows.validation:evaluate_policies",),
        command_only=frozenset({"as_json"}),
        api_only=frozenset({"samples"}),  # a ready sample list instead of DATA
    ),
    "ensemble": Spec(
        ("boneseg.workflows.ensemble:ensemble",),
        renamed={"size": "shape", "output": "out"},
        command_only=frozenset({"output_alias"}),  # -o's old name
    ),
    "select": Spec(
        ("boneseg.workflows.select:select",),
        renamed={"gt": "data"},
        negated={"overall": "per_class"},
        api_only=CACHE,
    ),
    "pseudo": Spec(("boneseg.workflows.pseudo:make_pseudo",), command_only=JSON),
    "oof": Spec(
        ("boneseg.workflows.oof:oof",),
        renamed={"out": "output"},
        # one uncalibrated model per image: oof refuses a calibration or weights; runs only, no exports
        api_only=frozenset({"calibration", "weights", "trust_model"}),
    ),
    "calibrate": Spec(("boneseg.workflows.calibrate:calibrate",), command_only=frozenset({"as_json"}), api_only=CACHE),
    "audit": Spec(
        ("boneseg.workflows.audit:run_audit",),
        command_only=frozenset({"top"}),  # rows printed on the terminal
    ),
    "analyze": Spec(
        ("boneseg.workflows.analysis:analyze", "boneseg.workflows.analysis:write_plots"),
        renamed={"out": "out_dir"},
        command_only=JSON | {"report"},  # --report chains `report`'s page
        api_only=CACHE | {"result"},
    ),
    "report": Spec(("boneseg.workflows.report:build_report",), api_only=CACHE),
    "check": Spec(
        ("boneseg.submission:validate_submission",),
        renamed={"submission": "path", "size": "shape"},
        command_only=JSON,
        api_only=frozenset({"limit"}),  # problems listed before stopping: the CLI keeps the library's
    ),
    "export": Spec(("boneseg.workflows.export:export",), renamed={"out": "output", "postprocess": "postprocess_rules"}),
    "demo": Spec(
        ("boneseg.workflows.demo:run_demo",),
        command_only=JSON | {"threads"},  # --threads: one entry of `overrides`
        api_only=frozenset({"overrides"}),
    ),
    "models": Spec(("boneseg.modelling.registry:catalog",), command_only=JSON),
    "masks": Spec(("boneseg.workflows.masks:write_masks",)),
    "postprocess": Spec(
        ("boneseg.workflows.postprocess_csv:postprocess_csv",), renamed={"out": "output"}, command_only=JSON
    ),
}


def _keywords(spec: Spec) -> dict[str, list[inspect.Parameter]]:
    """The keywords of the spec's functions; an options object (a dataclass default, e.g. `PredictOptions`)
    stands for its fields, each with the default that function gives it."""
    found: dict[str, list[inspect.Parameter]] = {}
    for target in spec.functions:
        module, name = target.split(":")
        for p in inspect.signature(getattr(importlib.import_module(module), name)).parameters.values():
            if dataclasses.is_dataclass(p.default) and not isinstance(p.default, type):
                for f in dataclasses.fields(p.default):
                    kind = inspect.Parameter.KEYWORD_ONLY
                    found.setdefault(f.name, []).append(
                        inspect.Parameter(f.name, kind, default=getattr(p.default, f.name))
                    )
                continue
            found.setdefault(p.name, []).append(p)
    return found


def _same(cli, default) -> bool:
    """`cli` (an option's default or the text of its help's ``[default: X]``) is `default` in the CLI's spelling."""
    if cli == default or (cli in ("none", "off") and default in (None, 0, False)) or (cli == "on" and default is True):
        return True
    if isinstance(cli, str) and default is not None and not isinstance(default, str):
        parse = parse_size if isinstance(default, tuple) and all(isinstance(v, int) for v in default) else None
        try:
            value = parse(cli) if parse else parse_floats(cli, "")
        except Exception:
            return False
        return list(value or []) == (list(default) if isinstance(default, tuple | list) else [default])
    return str(cli) == str(default)


def _options(command: str) -> dict[str, click.Parameter]:
    from boneseg.cli import app

    return {p.name: p for p in typer.main.get_command(app).commands[command].params if p.name}


def test_every_command_has_a_spec():
    from boneseg.cli import app

    assert set(typer.main.get_command(app).commands) - {"train", "distill"} == set(SPECS)


@pytest.mark.parametrize("command", sorted(SPECS))
def test_options_match_the_library_defaults(command):
    spec = SPECS[command]
    keywords = _keywords(spec)
    options = _options(command)
    reached = set()
    for name, option in options.items():
        if name in spec.command_only:
            continue
        key = spec.renamed.get(name) or spec.negated.get(name) or name
        assert key in keywords, f"{command} --{name}: no keyword {key!r} in {spec.functions}"
        reached.add(key)
        for p in keywords[key]:
            if p.default is inspect.Parameter.empty:
                continue  # required by the library: no default to agree with (demo's OUT is the command's own)
            default = (not p.default) if name in spec.negated else p.default
            assert option.default is None or _same(option.default, default), (
                f"{command} --{name}: option default {option.default!r} != {p.name}={default!r}"
            )
            shown = re.search(r"[\[(]default:? ([^\]);,]+)", getattr(option, "help", "") or "")
            if shown and default is not None:
                assert _same(shown.group(1), default), f"{command} --{name}: help says {shown.group(1)!r}"
    missing = set(keywords) - reached - spec.api_only - API_ONLY
    assert not missing, f"{command}: keywords with no option {sorted(missing)}"


PREDICTING = ("predict", "tta", "oof")


def test_predictor_options_read_alike_everywhere():
    """Every command that predicts takes the `PredictOptions` fields it exposes from one block
    (`boneseg.cli.options`): the same flags and help everywhere, and predict and tta expose every field."""
    from boneseg.inference import PredictOptions

    fields = [f.name for f in dataclasses.fields(PredictOptions)]
    seen: dict[str, tuple] = {}
    for command in PREDICTING:
        options = _options(command)
        if command != "oof":
            assert set(fields) <= set(options), f"{command}: no option for {set(fields) - set(options)}"
        for name in fields:
            if name in options:
                o = options[name]
                shape = (tuple(o.opts), tuple(o.secondary_opts), o.help)
                assert seen.setdefault(name, shape) == shape, f"{command} --{name} differs from the other commands'"
