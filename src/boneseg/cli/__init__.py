"""The ``boneseg`` command line: a thin Typer layer over the library."""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

from boneseg.cli.app import app, state
from boneseg.cli import (  # noqa: F401  (each module registers its commands on `app`)
    synth_cmd, eda_cmd, split_cmd, train_cmd, predict_cmd, tta_cmd, pseudo_cmd, ensemble_cmd,
    analyze_cmd, check_cmd, demo_cmd,
)
from boneseg.errors import BonesegError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning every failure into one ``Error: …`` line on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        state["debug"] = True
    _terminate_like_ctrl_c()
    try:
        app(args=argv, prog_name="boneseg")
    except SystemExit:
        raise
    except BonesegError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except MemoryError:
        _fail("out of memory", 1)
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _fail(f"{where}{exc.strerror or exc}", 1)
    except Exception as exc:  # an unexpected failure still gets one line unless --debug
        _fail(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (e.g. from a job scheduler or torchrun) unwinds like Ctrl-C, so partial outputs are removed."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _fail(message: str, code: int) -> None:
    if state["debug"]:
        traceback.print_exc()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: say which rank speaks
        message = f"[rank {os.environ.get('RANK', '?')}] {message}"
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(code)
