"""`boneseg distill`: `train`'s options (the same definitions, taken from `train`) plus the teacher's."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from boneseg.cli.app import app
from boneseg.cli.train_cmd import run_train, train_command

_TEACHER = [
    inspect.Parameter(
        "teacher",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=list[Path] | None,
        default=typer.Option(
            None,
            "--teacher",
            metavar="PROBS|PLAN",
            help=(
                "The teacher: probability folders of the train images (`oof --save-probs`; several are averaged), "
                "or a `select` soft plan (its folders and per-class weights); repeatable. Required unless --resume."
            ),
        ),
    ),
    inspect.Parameter(
        "teacher_test",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=list[Path] | None,
        default=typer.Option(
            None,
            "--teacher-test",
            metavar="PROBS",
            help=(
                "The same models' probability folders of DATA's test images (`predict --save-probs`), one per "
                "teacher folder in the same order: trained on as soft pseudo-labels."
            ),
        ),
    ),
    inspect.Parameter(
        "teacher_weight",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=float | None,
        default=typer.Option(
            None,
            "--teacher-weight",
            help=(
                "Teacher's share w of a labelled image's target (1-w)*label + w*teacher, which every --loss "
                "term is computed against (0: labels only, 1: teacher only) \\[default: 0.5]."
            ),
        ),
    ),
]


def distill_command(**params) -> None:
    """Train one student on a teacher ensemble's probabilities (out-of-fold for the train images, optionally
    the test images'), mixed with the labels; every `train` option applies and the student is a normal run
    (predict, tta, export, report take it)."""
    teacher = {name: params.pop(name) for name in ("teacher", "teacher_test", "teacher_weight")}
    run_train(params, teacher)


_DATA, *_OPTIONS = inspect.signature(train_command, eval_str=True).parameters.values()
_SIGNATURE = inspect.Signature(  # DATA, the teacher's options, then train's (keyword-only: Typer passes names)
    [_DATA.replace(kind=inspect.Parameter.KEYWORD_ONLY), *_TEACHER]
    + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in _OPTIONS]
)
distill_command.__signature__ = _SIGNATURE  # type: ignore[attr-defined]
distill_command.__annotations__ = {p.name: p.annotation for p in _SIGNATURE.parameters.values()}
app.command("distill")(distill_command)
