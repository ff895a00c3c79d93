"""Output files: the ``--force`` rule, one writer per output, and the one way to publish an output.

Every output, file or folder, is built complete beside its target (a hidden ``.NAME.XXXXXXXX.tmp`` file or
``.NAME.XXXXXXXX.partial`` file or folder), checked, then swapped in (`publishing`, `atomic_path`,
`publish_folder`); the old output is removed only after the new one is in place. Several outputs that belong
together (a model and its sidecar, a report's files) are one `Publication`, swapped in as a unit through a
journal (``.NAME.XXXXXXXX.swap``) that the next writer replays when a writer died in the middle.

An output is held by one writer at a time (`hold`): a POSIX lock (``lockf``) on ``.NAME.lock`` beside it,
which the kernel releases when the writer dies, so no crash leaves it stuck (and which, unlike ``flock``, the
writer's forked workers do not inherit: an orphaned worker cannot keep it). The holder's pid, host and command are
in the lock file; a second writer is refused naming them. Whoever takes the lock removes what a dead writer
of that output left behind (its temp files and staging folders; a half-done swap is rolled back).

An output that is a symbolic link is written through it (the link stays, its target is replaced); one that
is not a regular file or folder (``/dev/null``, a FIFO, ``/dev/fd/N``) is a stream, written in place with no
``--force`` needed, like ``-`` for standard output.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from boneseg.errors import (
    CheckpointError,
    DataError,
    Interrupted,
    OutputBusyError,
    OutputExistsError,
    UsageError,
    quote,
)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_ARTIFACT = re.compile(r"^\.(?P<name>.+)\.(?P<token>[0-9a-z_]{8})\.(?P<kind>tmp|partial|old|swap)$")
"""A writer's hidden work files: temp files, staging files/folders, backups of the old output, journals."""

KILL_AT = "BONESEG_TEST_KILL_AT"
"""Tests only (honoured under pytest): a writer publishing this path (or a path inside it) kills itself with
SIGKILL just before the swap (``PATH``) or after its first rename (``PATH@mid``), to test recovery."""


def is_stdout(path: str | os.PathLike | None) -> bool:
    """True for ``-`` (or None), which means standard output."""
    return path is None or str(path) == "-"


def _target(path: Path) -> Path:
    """Where writing `path` lands: a symbolic link's final target, else `path`."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _is_stream(path: Path) -> bool:
    """True for an existing output that is neither a regular file nor a folder (a device, a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_output(path: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing output unless `force` (a stream needs none); return it as a Path."""
    path = Path(path)
    if path.exists() and not force and not _is_stream(path):
        raise OutputExistsError(f"{path} already exists (use --force to overwrite)")
    return path


def check_apart(path: str | os.PathLike, folder: str | os.PathLike, path_option: str, folder_option: str) -> None:
    """Refuse (`UsageError`) output `path` inside output folder `folder` (or the same path): the folder is
    published whole, which would replace or hide it."""
    p, f = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    if p == f or f in p.parents:
        raise UsageError(
            f"{path_option} {path}: inside {folder_option} {folder}, which is written as a whole; put it elsewhere"
        )


def shown(path: str | os.PathLike) -> Path:
    """`path` as its user knows it: a staged part (``.NAME.XXXXXXXX.partial``/``.tmp``) named as its target."""
    staged = (_ARTIFACT.match(p) for p in Path(path).parts)
    parts = [m["name"] if m and m["kind"] in ("partial", "tmp") else p for m, p in zip(staged, Path(path).parts)]
    return Path(*parts) if parts else Path(path)


def _disk_error(path: Path, exc: OSError) -> DataError:
    return DataError(f"cannot write {shown(path)}: {exc.strerror or exc}")


def disk_full(path: str | os.PathLike, exc: BaseException) -> DataError | None:
    """The one-line `DataError` for a write of `path` that failed because the disk is full, whatever library
    raised it (an ``OSError`` ENOSPC, or a writer's own error quoting it, e.g. safetensors'); None otherwise."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            break
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text or "Errno 28" in text:
            break
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    else:
        return None
    return DataError(f"cannot write {path}: No space left on device")


def _make_parent(path: Path) -> list[Path]:
    """Create the folders above output `path` (returned, outermost first); a file in their way is a
    `DataError` naming it."""
    missing = [p for p in reversed(path.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(f"cannot write {path}: a part of {path.parent} is a file, not a folder") from None
    except OSError as exc:
        raise _disk_error(path, exc) from None
    return missing


def _remove(path: Path) -> None:
    """Remove a file, link or folder; gone already is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _kill_point(dest: Path, point: str = "") -> None:
    """`KILL_AT` (tests only): SIGKILL this process when publishing `dest` at the named point."""
    at = os.environ.get(KILL_AT)
    if not at or "PYTEST_CURRENT_TEST" not in os.environ:
        return
    where, _, named = at.partition("@")
    if named == point and (dest == Path(where) or Path(where) in dest.parents):
        os.kill(os.getpid(), signal.SIGKILL)


# -- one writer per output -------------------------------------------------------------------------

_HELD: dict[str, int] = {}
"""Outputs this process holds (absolute path -> nesting depth); holding one again nests."""
_WRITER = {"command": " ".join(sys.argv) or "python"}


def set_writer(command: str) -> None:
    """How this process's locks name it to a second writer (the CLI sets its command line)."""
    _WRITER["command"] = command


def lock_file(path: str | os.PathLike) -> Path:
    """The lock file of output `path`: ``.NAME.lock`` beside it (beside a symbolic link's target)."""
    dest = _target(Path(path))
    return dest.with_name(f".{dest.name}.lock")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process (it has not said which yet)"


@contextlib.contextmanager
def on_interrupt(*paths: str | os.PathLike | None, leaves: str | None = None) -> Iterator[None]:
    """A Ctrl-C/SIGTERM (``KeyboardInterrupt``) inside becomes an `Interrupted` that names outputs `paths` as
    unchanged (or says `leaves`: what the interrupted work leaves of them instead); an `Interrupted` passing
    through gets them added. `hold` does this for the outputs it holds."""
    given = [str(p) for p in paths if p is not None and not is_stdout(p)]
    try:
        yield
    except KeyboardInterrupt:
        exc = Interrupted()
        exc.add(given, leaves)
        raise exc from None
    except Interrupted as exc:
        exc.add(given, leaves)
        raise


@contextlib.contextmanager
def hold(*paths: str | os.PathLike | None, interrupted: str | None = None) -> Iterator[None]:
    """Hold outputs `paths` for writing (standard output and streams need no holding), removing what a dead
    writer of them left; nests within one process. A Ctrl-C inside says they are unchanged, or `interrupted`
    (what is left of them instead): `on_interrupt`.

    Raises:
        OutputBusyError: another process holds one of them (the message names its pid, host and command).
        Interrupted: a Ctrl-C or SIGTERM while they were held.
    """
    with on_interrupt(*paths, leaves=interrupted), contextlib.ExitStack() as stack:
        for p in dict.fromkeys(Path(p) for p in paths if p is not None and not is_stdout(p)):
            if not _is_stream(p):
                stack.enter_context(_hold_one(p))
        yield


@contextlib.contextmanager
def _hold_one(path: Path) -> Iterator[None]:
    import fcntl

    dest = _target(path)
    key = os.path.abspath(dest)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    made = _make_parent(dest)
    lock = lock_file(dest)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~_UMASK)
        except OSError as exc:
            raise _disk_error(path, exc) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN/EACCES: held
            holder = _holder(fd)
            os.close(fd)
            raise OutputBusyError(
                f"{path} is being written by {holder}; one writer per output: wait for it to end or stop it"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:  # its last holder removed it after we opened it: take a fresh one
            same = False
        if same:
            break
        os.close(fd)
    since = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    info = f"pid {os.getpid()} on {socket.gethostname()} ({_WRITER['command'][:200]}) since {since}"
    with contextlib.suppress(OSError):  # a full disk: the lock still holds, only its description is lost
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
    _HELD[key] = 1
    try:
        recover(dest)
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)
        for folder in reversed(made):  # folders made only for this output, left empty by a failure
            with contextlib.suppress(OSError):
                folder.rmdir()


def _busy(dest: Path) -> bool:
    """Whether another process holds output `dest` now."""
    import fcntl

    lock = lock_file(dest)
    if os.path.abspath(dest) in _HELD or not lock.exists():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _artifacts(folder: Path) -> list[tuple[Path, re.Match]]:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [(folder / n, m) for n in names if (m := _ARTIFACT.match(n))]


def recover(path: str | os.PathLike) -> list[Path]:
    """Clean up after dead writers of output `path` (call it holding `path`): replay their half-done swaps
    (rolled back, or forward when every new part was in place) and remove their temp files and staging
    folders, beside `path` and, for a folder, inside it (unless another process holds that inner output).
    Returns what it removed or restored."""
    dest = _target(Path(path))
    beside = _artifacts(dest.parent)
    tokens = {m["token"] for _, m in beside if m["name"] == dest.name}  # a unit's other parts share its token
    found = [(p, m) for p, m in beside if m["token"] in tokens]
    if dest.is_dir() and not dest.is_symlink():
        found += [(p, m) for p, m in _artifacts(dest) if not _busy(dest / m["name"])]
    done = []
    for p, m in sorted(found, key=lambda f: f[1]["kind"] != "swap"):  # journals first: they restore backups
        if m["kind"] == "swap" and p.exists():
            _replay(p)
            done.append(p)
    for p, m in found:
        if m["kind"] != "swap" and os.path.lexists(p):
            _remove(p)
            done.append(p)
    return done


# -- publishing ------------------------------------------------------------------------------------


def _refuse_existing(dest: Path, shown: Path, folder: bool, force: bool) -> None:
    if force or not os.path.lexists(dest) or _is_stream(dest):
        return
    if not folder:
        raise OutputExistsError(f"{shown} already exists (use --force to overwrite)")
    if not dest.is_dir():
        raise OutputExistsError(f"{shown} already exists and is not a folder (use --force to overwrite)")
    if any(dest.iterdir()):
        raise OutputExistsError(f"{shown} is not empty (use --force to overwrite)")


def _replay(journal: Path) -> None:
    """Finish or undo the swap `journal` records: forward when every staged part is in place (the old ones
    are removed), else back (each new part removed, each old one restored)."""
    try:
        items = [tuple(Path(p) for p in item) for item in json.loads(journal.read_text())["items"]]
    except (OSError, ValueError, KeyError, TypeError):
        items = []
    if all(not os.path.lexists(staged) for staged, _, _ in items):
        for _, _, backup in items:
            _remove(backup)
    else:
        for staged, dest, backup in reversed(items):
            if not os.path.lexists(staged) and os.path.lexists(dest):  # the new part is in place: undo
                _remove(dest)
            if os.path.lexists(backup):
                os.replace(backup, dest)
            _remove(staged)
    journal.unlink(missing_ok=True)


class Publication:
    """Outputs built beside their targets and swapped in together (see the module notes); use `publishing`."""

    def __init__(self, force: bool = False):
        self.force = force
        self.token = secrets.token_hex(4)
        self.items: list[tuple[Path, Path, Path, bool]] = []  # staged, dest, shown, is a folder
        self.removed: set[Path] = set()  # targets removed by the swap, with nothing in their place

    def _staged(self, path: str | os.PathLike, folder: bool) -> tuple[Path, Path]:
        shown = Path(path)
        dest = _target(shown)
        _make_parent(dest)
        if any(d == dest for _, d, _, _ in self.items):
            raise ValueError(f"{shown} is published twice")
        return shown, dest

    def file(self, path: str | os.PathLike) -> Path:
        """Where to write output file `path` (a stream: `path` itself, written in place)."""
        shown = Path(path)
        if _is_stream(shown):
            return shown
        shown, dest = self._staged(shown, False)
        staged = dest.with_name(f".{dest.name}.{self.token}.partial")
        self.items.append((staged, dest, shown, False))
        return staged

    def folder(self, path: str | os.PathLike) -> Path:
        """A new empty folder to build output folder `path` in."""
        shown, dest = self._staged(path, True)
        staged = dest.with_name(f".{dest.name}.{self.token}.partial")
        try:
            staged.mkdir()
        except OSError as exc:
            raise _disk_error(shown, exc) from None
        self.items.append((staged, dest, shown, True))
        return staged

    def remove(self, path: str | os.PathLike) -> None:
        """Remove output `path` (if it exists) as part of the swap: an output the new set no longer has."""
        shown, dest = self._staged(path, False)
        if os.path.lexists(dest):
            self.items.append((dest.with_name(f".{dest.name}.{self.token}.partial"), dest, shown, False))
            self.removed.add(dest)

    def check(self) -> None:
        """Refuse (`OutputExistsError`) an output that exists, unless `force`; writes nothing."""
        for _, dest, shown, folder in self.items:
            _refuse_existing(dest, shown, folder, self.force)

    def commit(self) -> None:
        """Swap every staged output in; the old ones are removed only once all the new ones are in place."""
        self.check()
        for staged, dest, shown, _ in self.items:
            if dest not in self.removed and not os.path.lexists(staged):
                raise DataError(f"cannot write {shown}: it was not written")
        if not self.items:
            return
        first = self.items[0][1]
        _kill_point(first)
        simple = len(self.items) == 1 and not self.items[0][3] and not os.path.isdir(first) and not self.removed
        if simple:  # one file over a file (or nothing): one atomic rename
            os.replace(self.items[0][0], first)
            return
        items = [(s, d, d.with_name(f".{d.name}.{self.token}.old")) for s, d, _, _ in self.items]
        journal = first.with_name(f".{first.name}.{self.token}.swap")
        with open(journal, "w", encoding="utf-8") as fh:
            json.dump({"items": [[str(p) for p in item] for item in items]}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            for i, (staged, dest, backup) in enumerate(items):
                if os.path.lexists(dest):
                    os.replace(dest, backup)
                if i == 0:
                    _kill_point(dest, "mid")
                if dest not in self.removed:
                    os.replace(staged, dest)
        except BaseException:
            _replay(journal)
            raise
        for _, _, backup in items:
            _remove(backup)
        journal.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove everything staged (the targets are untouched)."""
        for staged, _, _, _ in self.items:
            _remove(staged)


@contextlib.contextmanager
def publishing(force: bool = False) -> Iterator[Publication]:
    """A `Publication`: write each output where ``pub.file(path)``/``pub.folder(path)`` says; when the block
    ends without an error, all of them are swapped in as one unit; on an error nothing is (the staged files
    are removed; a write that failed for lack of space is a `DataError` naming the output)."""
    pub = Publication(force)
    try:
        yield pub
        pub.commit()
    except OSError as exc:
        pub.discard()
        shown = next((s for _, _, s, _ in pub.items), Path(getattr(exc, "filename", None) or "output"))
        raise _disk_error(shown, exc) from exc
    except BaseException:
        pub.discard()
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    On any error the temporary file is removed and `path` is left as it was.
    """
    path = check_output(path, force)
    if _is_stream(path):
        try:
            yield path
        except OSError as exc:
            raise _disk_error(path, exc) from exc
        return
    dest = _target(path)
    _make_parent(dest)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise _disk_error(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        if not force and dest.exists():
            raise OutputExistsError(f"{path} appeared while writing (use --force to overwrite)")
        _kill_point(dest)
        os.replace(tmp_path, dest)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _disk_error(path, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike | None, mode: str = "w", force: bool = False, **kwargs: Any) -> Iterator[IO]:
    """Open `path` for writing atomically; ``-``/None yields standard output."""
    if is_stdout(path):
        stream = sys.stdout.buffer if "b" in mode else sys.stdout
        yield stream
        stream.flush()
        return
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")
    assert path is not None  # is_stdout took None
    with atomic_path(path, force) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()
        if not _is_stream(tmp):
            os.fsync(fh.fileno())


def write_json(path: str | os.PathLike | None, obj: Any, force: bool = False) -> None:
    """Write `obj` as indented JSON atomically (``-`` for stdout)."""
    with atomic_open(path, "w", force=force) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


class _DuplicateKey(ValueError):
    def __init__(self, key: str, line: int | None = None):
        super().__init__(key)
        self.key, self.line = key, line


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; a key given twice is an error naming it (the last would win silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (UTF-8, with or without a byte-order mark); a missing, unreadable, malformed or too
    deeply nested one, or one giving a key twice in an object, is a `DataError`."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh, object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except _DuplicateKey as exc:
        raise DataError(f"{path}: key {exc.key!r} is given twice (which one is meant?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: malformed JSON (nested too deeply)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a JSON file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def load_tensors(path: str | os.PathLike, what: str, map_location: Any = "cpu") -> Any:
    """A torch file from elsewhere (a checkpoint, a state dict) read ``weights_only``: plain tensors and values,
    never code. `what` names what it should be in the error (``"boneseg checkpoint"``, ``"state dict"``).

    Raises:
        CheckpointError: a file holding Python objects (naming the first; it is never unpickled) or a corrupt
            or foreign one, as one line (torch's advice to load it with ``weights_only=False`` left out).
    """
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign or broken files
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # a Python object, not data
        if found:
            raise CheckpointError(
                f"{path}: refused: it holds Python objects that could run code when loaded "
                f"({quote(found.group(1))}); only checkpoints of plain tensors and values are "
                "accepted: re-save it as a state dict from the code that made it"
            ) from None
        raise CheckpointError(
            f"{path}: not a loadable {what} (a corrupt or foreign file; only checkpoints of plain tensors and "
            "values are accepted)"
        ) from None


def weight_mismatches(
    own: Mapping[str, Any], theirs: Mapping[str, Any], foreign: str = "is not in this model"
) -> list[str]:
    """What stops `theirs` (a state dict read by `load_tensors`) loading into a module whose state dict is
    `own`, in words, one per tensor: missing, left over (`foreign`), or of another shape; [] when all fit."""
    return (
        [f"{k} is missing" for k in own if k not in theirs]
        + [f"{k} {foreign}" for k in theirs if k not in own]
        + [
            f"{k} is {tuple(theirs[k].shape)}, not {tuple(v.shape)}"
            for k, v in own.items()
            if k in theirs and theirs[k].shape != v.shape
        ]
    )


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file safely (plain data only), with `read_json`'s rules: a missing, unreadable, malformed or
    too deeply nested file, or a mapping giving a key twice, is a `DataError`."""
    import yaml

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base``: later keys override on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
                if isinstance(key, (str, int, float, bool)):
                    seen.add(key)
            return super().construct_mapping(node, deep)

    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8-sig"), Loader=Strict)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a YAML file") from None
    except _DuplicateKey as exc:
        raise DataError(f"{path}: line {exc.line}: key {exc.key!r} is given twice (which one is meant?)") from None
    except RecursionError:
        raise DataError(f"{path}: malformed YAML (nested too deeply)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed YAML ({' '.join(str(exc).split())[:200]})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def staging_folder(folder: str | os.PathLike) -> Path:
    """A new empty hidden folder beside `folder`, to write an output folder into before `publish_folder`."""
    folder = _target(Path(folder))
    _make_parent(folder)
    path = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.partial")
    try:
        path.mkdir()
    except OSError as exc:
        raise _disk_error(folder, exc) from None
    return path


def check_not_over_inputs(out: str | os.PathLike, inputs: Sequence[object], option: str) -> None:
    """A `UsageError` when the output folder `out` is one of `inputs` (paths; None and other values are
    skipped) or holds one: replacing it (``--force``) would delete what the command reads."""
    target = Path(out).resolve()
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            continue
        path = Path(item).resolve()
        if path == target or target in path.parents:
            raise UsageError(f"{option} {out}: holds the input {item}, which replacing it would delete")


def publish_folder(staging: str | os.PathLike, folder: str | os.PathLike, force: bool = False) -> None:
    """Move the completely written `staging` folder onto `folder`. A non-empty `folder` is replaced only
    with `force`, and is never left half-replaced (`OutputExistsError` without `force`); so is a file."""
    staging, shown = Path(staging), Path(folder)
    pub = Publication(force)
    match = _ARTIFACT.match(staging.name)
    if match:
        pub.token = match["token"]
    pub.items.append((staging, _target(shown), shown, True))
    pub.commit()
