"""How library code reports progress and status: one `Reporter`, silent by default.

Long-running functions take ``reporter: Reporter = SILENT``; they open one task per counted step
(``with reporter.task("predict", len(images), "img") as t: ... t.advance()``) and send one-line status
with ``reporter.message(text)``. The CLI passes its rich reporter (bars with rate and ETA); `PLAIN`
prints the messages to stderr without bars.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["PLAIN", "SILENT", "Plain", "Reporter", "Task", "track"]

T = TypeVar("T")


class Task:
    """A handle on one counted step; this base shows nothing."""

    def advance(self, n: int = 1) -> None:
        """`n` more items done."""

    def update(self, done: int | None = None, total: int | None = None, info: str | None = None) -> None:
        """Set the count done, the total, or a short `info` text shown after the rate."""

    def close(self) -> None:
        """The step is over."""

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Reporter:
    """Where progress and status go; this base (`SILENT`) drops them. Subclasses override both methods."""

    def task(self, description: str, total: int | None, unit: str = "it", done: int = 0) -> Task:
        """A new counted step of `total` `unit`s (`done` of them already done)."""
        return Task()

    def message(self, text: str) -> None:
        """One line of status (plain text, shown as is)."""


class Plain(Reporter):
    """Messages as lines on stderr, no bars: for scripts and logs."""

    def message(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


SILENT = Reporter()
PLAIN = Plain()


def track(items: Sequence[T], reporter: Reporter, description: str, unit: str = "it") -> Iterator[T]:
    """The `items`, counted as one `reporter` task."""
    with reporter.task(description, len(items), unit) as task:
        for item in items:
            yield item
            task.advance()
