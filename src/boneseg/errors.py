"""The project's exceptions: library code raises these, the CLI turns them into one-line errors."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class BonesegError(Exception):
    """Base of every error the CLI reports as ``Error: <message>`` (exit code `exit_code`)."""

    exit_code = 1


class UsageError(BonesegError):
    """A wrong option or option value (unknown name, impossible number)."""

    exit_code = 2


class DataError(BonesegError):
    """Input data that cannot be used: missing or corrupt files, bad labels, broken RLE or CSV."""


class OutputExistsError(BonesegError):
    """An output already exists and ``--force`` was not given."""


class OutputBusyError(OutputExistsError):
    """An output another process is writing (one writer per output)."""


class CheckpointError(BonesegError):
    """A checkpoint that cannot be loaded safely."""


class Interrupted(BonesegError):
    """A Ctrl-C or SIGTERM while outputs were held (`boneseg.io.on_interrupt`, `boneseg.io.hold`): says what
    is left and how to go on; the CLI prefixes the command (``train interrupted; …``), exit code 130.

    `kept`: the outputs held when it came, the outermost holder's spelling first; every output is published
    whole (`boneseg.io.publishing`), so none of them changed. `notes`: (output, what it leaves instead), from a
    holder that leaves something (a run folder keeps its previous ``last.pt``); a note about a path inside
    another kept output is not the user's concern (that output is unchanged as a whole).
    """

    exit_code = 130

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[str] = []
        self.notes: list[tuple[str, str]] = []

    def add(self, paths: Iterable[str], leaves: str | None = None) -> None:
        """What one holder held (added by each holder the interrupt passes through, innermost first)."""
        import os

        given = list(dict.fromkeys(paths))
        mine = [os.path.abspath(p) for p in given]
        self.kept = given + [k for k in self.kept if not _within(os.path.abspath(k), mine, same=True)]
        if leaves is not None:
            self.notes += [(p, leaves) for p in mine]

    def __str__(self) -> str:
        import os

        kept = [os.path.abspath(k) for k in self.kept]
        for path, leaves in self.notes:
            if not _within(path, kept):
                return leaves
        said = "no output was written" + (f" ({', '.join(self.kept)} unchanged)" if self.kept else "")
        return f"{said}; rerun the same command"


def _within(path: str, folders: Iterable[str], same: bool = False) -> bool:
    """Whether absolute `path` lies inside one of `folders` (or, with `same`, is one of them)."""
    import os

    return any((same and path == f) or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


class BonesegWarning(UserWarning):
    """A choice the library made on the user's behalf; the CLI shows it as one ``Warning: …`` line."""


def quote(value: object, width: int = 40) -> str:
    """User data quoted in a message, cut to `width` characters: ``'image_name,fin…' (1760 characters)``."""
    text = str(value)
    return repr(text) if len(text) <= width else f"{text[:width]!r}… ({len(text)} characters)"


def closest(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The valid `choices` ordered closest-first to `name` (all of them, best first)."""
    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    near = [lower[c] for c in difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.0)]
    rest = [c for c in choices if c not in near]
    return near + rest


def suggest(name: str, choices: Iterable[str], show: int = 8) -> str:
    """A ``"; did you mean …? valid: …"`` suffix for error messages."""
    ordered = closest(name, choices)
    if not ordered:
        return ""
    head = ", ".join(ordered[:show])
    more = f", … ({len(ordered) - show} more)" if len(ordered) > show else ""
    return f"; did you mean {ordered[0]!r}? valid (closest first): {head}{more}"


def check_workers(workers: int | None) -> None:
    """Raise `UsageError` for a negative number of workers (data-loader or process-pool; None: the default)."""
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")


def out_of_memory(exc: BaseException, command: str | None = None) -> str | None:
    """One line for running out of CPU or GPU memory (Python's ``MemoryError``, torch's CPU allocator failure,
    a CUDA out-of-memory error), naming what ran out, how much was asked and what to lower; None for other
    errors."""
    text = str(exc)
    if isinstance(exc, MemoryError) or any(
        words in text for words in ("DefaultCPUAllocator", "can't allocate memory", "Failed to allocate memory")
    ):
        what = "CPU memory"
    elif type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text:
        what = "GPU memory" + (f" (GPU {found.group(1)})" if (found := re.search(r"\bGPU (\d+)", text)) else "")
    else:
        return None
    asked = ""
    if found := re.search(r"allocate (\d+) bytes", text):
        size, units = float(found.group(1)), ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"]
        while size >= 1024 and len(units) > 1:
            size, units = size / 1024, units[1:]
        asked = f" allocating {size:.1f} {units[0]}"
    elif found := re.search(r"[Tt]ried to allocate ([\d.]+ [KMGTP]?i?B)", text):
        asked = f" allocating {found.group(1)}"
    who = f"{command} ran" if command else "ran"
    return (
        f"{who} out of {what}{asked}: try a smaller --batch-size, --size/--crop or --window "
        "(or fewer --workers); what was written before is kept"
    )
