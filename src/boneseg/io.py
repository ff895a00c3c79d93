"""Output files: the ``--force`` rule and atomic writes (temp file in the same folder + rename).

An output that is a symbolic link is written through it (the link stays, its target is replaced); one that
is not a regular file or folder (``/dev/null``, a FIFO, ``/dev/fd/N``) is a stream, written in place with no
``--force`` needed, like ``-`` for standard output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from boneseg.errors import DataError, OutputExistsError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


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


def _disk_error(path: Path, exc: OSError) -> DataError:
    return DataError(f"cannot write {path}: {exc.strerror or exc}")


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


def _make_parent(path: Path) -> None:
    """Create the folders above output `path`; a file in their way is a `DataError` naming it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(f"cannot write {path}: a part of {path.parent} is a file, not a folder") from None
    except OSError as exc:
        raise _disk_error(path, exc) from None


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
    path.mkdir()
    return path


def publish_folder(staging: str | os.PathLike, folder: str | os.PathLike, force: bool = False) -> None:
    """Move the completely written `staging` folder onto `folder`. A non-empty `folder` is replaced only
    with `force`, and is never left half-replaced (`OutputExistsError` without `force`); so is a file."""
    staging, shown = Path(staging), Path(folder)
    folder = _target(shown)
    if folder.exists() and not force:
        if not folder.is_dir():
            raise OutputExistsError(f"{shown} already exists and is not a folder (use --force to overwrite)")
        if any(folder.iterdir()):
            raise OutputExistsError(f"{shown} is not empty (use --force to overwrite)")
    old = staging.with_name(staging.name + ".old") if folder.exists() else None
    if old is not None:
        os.replace(folder, old)
    try:
        os.replace(staging, folder)
    except OSError:
        if old is not None:
            os.replace(old, folder)
        raise
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink(missing_ok=True)
