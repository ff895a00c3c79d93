"""Output files: the ``--force`` rule and atomic writes (temp file in the same folder + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
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


def check_output(path: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing output unless `force`; return it as a Path."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists (use --force to overwrite)")
    return path


def _disk_error(path: Path, exc: OSError) -> DataError:
    return DataError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    On any error the temporary file is removed and `path` is left as it was.
    """
    path = check_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        if not force and path.exists():
            raise OutputExistsError(f"{path} appeared while writing (use --force to overwrite)")
        os.replace(tmp_path, path)
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
        os.fsync(fh.fileno())


def write_json(path: str | os.PathLike | None, obj: Any, force: bool = False) -> None:
    """Write `obj` as indented JSON atomically (``-`` for stdout)."""
    with atomic_open(path, "w", force=force) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (UTF-8, with or without a byte-order mark); a missing, unreadable, malformed or too
    deeply nested one is a `DataError`."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: malformed JSON (nested too deeply)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a JSON file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def staging_folder(folder: str | os.PathLike) -> Path:
    """A new empty hidden folder beside `folder`, to write an output folder into before `publish_folder`."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.partial")
    path.mkdir()
    return path


def publish_folder(staging: str | os.PathLike, folder: str | os.PathLike, force: bool = False) -> None:
    """Move the completely written `staging` folder onto `folder`. A non-empty `folder` is replaced only
    with `force`, and is never left half-replaced (`OutputExistsError` without `force`)."""
    staging, folder = Path(staging), Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise OutputExistsError(f"{folder} is not empty (use --force to overwrite)")
    old = staging.with_name(staging.name + ".old") if folder.exists() else None
    if old is not None:
        os.replace(folder, old)
    try:
        os.replace(staging, folder)
    except OSError:
        if old is not None:
            os.replace(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
