"""Shared terminal output: consoles, progress bars and tables. User-supplied text (paths, image names)
is printed with `escape` or as `plain` text, never as rich markup."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from boneseg.progress import Reporter
from boneseg.progress import Task as _Task

__all__ = ["console", "err_console", "escape", "out_console", "plain", "print_json", "progress", "reporter", "table"]


_UNWRAPPED = 100_000  # columns when the output is not a terminal: more than any message or table needs


class _Console(Console):
    """Wraps lines and tables to a terminal's width; into a file or pipe, never: each message and table row
    stays one line for ``grep`` and line-by-line parsing."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(_UNWRAPPED, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]  # mypy sees only the getter

    def rule(self, title: str | Text = "", **kwargs) -> None:
        """A horizontal rule, 80 columns wide when not on a terminal."""
        from rich.rule import Rule

        self.print(Rule(title, **kwargs), width=None if self.is_terminal else 80)


console = _Console(stderr=True, highlight=False)
"""Human-oriented output goes to stderr so stdout stays free for CSV/JSON."""
err_console = _Console(stderr=True, highlight=False, soft_wrap=True)
out_console = _Console(highlight=False, soft_wrap=True)


class _RateColumn(ProgressColumn):
    """Items per second (``unit`` field, default "it") and an optional ``info`` field."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        rate = f"{speed:.2f} {unit}/s" if speed else f"- {unit}/s"
        info = task.fields.get("info", "")
        return Text(f"{rate} {info}".rstrip(), style="cyan")


def progress(transient: bool = False, disable: bool | None = None) -> Progress:
    """A rich progress bar with count, rate and ETA (on stderr). Off with `disable`; a `transient` one also
    when stderr is not a terminal (there it would leave only an empty line)."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # e.g. "predict [rank 0 of 4]"
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=bool(disable) or (transient and not console.is_terminal),
    )


def plain(value: object) -> Text:
    """`value` as terminal text shown exactly (no rich markup: file names may hold brackets)."""
    return value if isinstance(value, Text) else Text(f"{value:.4f}" if isinstance(value, float) else str(value))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    """A rich table from plain rows (floats shown with 4 decimals); pass `rich.text.Text` for styled cells.
    The title stays on one line however narrow the table."""
    t = Table(title=Text(title, no_wrap=True, overflow="ignore"), title_justify="left")
    for c in columns:
        t.add_column(plain(c), justify="right" if c not in columns[:1] else "left")
    for row in rows:
        t.add_row(*map(plain, row))
    return t


def print_json(obj: Mapping | Sequence) -> None:
    """Machine-readable JSON on stdout."""
    import json

    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class RichReporter(Reporter):
    """The library's `Reporter` on a rich `Progress`: one bar per task, messages as console lines."""

    def __init__(self, bar: Progress, transient: bool = False):
        self.bar, self.transient = bar, transient

    def task(self, description: str, total: int | None, unit: str = "it", done: int = 0) -> _Task:
        return _RichTask(self, self.bar.add_task(description, total=total, completed=done, unit=unit))

    def message(self, text: str) -> None:
        self.bar.console.print(text, markup=False, highlight=False)


class _RichTask(_Task):
    def __init__(self, owner: RichReporter, task_id):
        self.owner, self.id = owner, task_id

    def advance(self, n: int = 1) -> None:
        self.owner.bar.advance(self.id, n)

    def update(self, done: int | None = None, total: int | None = None, info: str | None = None) -> None:
        if info is None:
            self.owner.bar.update(self.id, completed=done, total=total)
        else:
            self.owner.bar.update(self.id, completed=done, total=total, info=info)

    def close(self) -> None:
        if self.owner.transient:
            self.owner.bar.remove_task(self.id)


@contextmanager
def reporter(transient: bool = False, disable: bool | None = None) -> Iterator[RichReporter]:
    """A `RichReporter` for library calls: bars as `progress` draws them (none when `disable`; messages still
    print); with `transient`, each bar disappears when its task closes."""
    with progress(transient=transient, disable=disable) as bar:
        try:
            yield RichReporter(bar, transient)
        finally:
            if not bar.tasks and not bar.disable:  # nothing drawn: no empty line on stderr (before an `Error:`, say)
                bar.live.transient = True
                bar.live.stop()
                bar.disable = True  # rich's Progress.stop would print an empty line on a non-terminal
