"""The ``boneseg`` command line: a thin Typer layer over the library."""

from __future__ import annotations

import importlib
import os
import select
import signal
import sys
import threading
import traceback
import typing
import warnings

try:  # a Ctrl-C while the command line loads: one line, not a traceback
    import typer

    from boneseg.cli import (  # noqa: F401  (each module registers its commands on `app`)
        analyze_cmd,
        audit_cmd,
        calibrate_cmd,
        check_cmd,
        demo_cmd,
        distill_cmd,
        eda_cmd,
        ensemble_cmd,
        export_cmd,
        masks_cmd,
        models_cmd,
        oof_cmd,
        postprocess_cmd,
        predict_cmd,
        pseudo_cmd,
        report_cmd,
        select_cmd,
        split_cmd,
        synth_cmd,
        train_cmd,
        tta_cmd,
    )
    from boneseg.cli.app import app, state
    from boneseg.errors import BonesegError, BonesegWarning, Interrupted, out_of_memory, quote, suggest
    from boneseg.io import set_writer
except KeyboardInterrupt:
    print("Error: interrupted", file=sys.stderr)
    sys.exit(130)

__all__ = ["app", "main"]

# Click's exceptions, wherever this Typer takes click from (recent Typers vendor it).
_click = importlib.import_module(typer.BadParameter.__module__)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning every failure into one ``Error: …`` line on stderr.

    Without `argv` (the ``boneseg`` program itself), a Ctrl-C or SIGTERM once the command has finished is
    ignored: its output is complete and the exit code stays the command's."""
    own_process = argv is None
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    if "--debug" in argv:
        state["debug"] = True
    state.update(command=None, finished=None)
    set_writer(" ".join(["boneseg", *argv]))  # how a lock on an output names this command
    try:
        _terminate_like_ctrl_c()
        command = typer.main.get_command(app)
        command._main_shell_completion({}, "boneseg")  # exits when the shell asks for completions
        code = _invoke(command, argv, own_process)
    except _click.ClickException as exc:
        _fail(_usage_message(exc), exc.exit_code)
    except Interrupted as exc:  # what the library says its outputs are left as
        _fail(f"{state['command'] or 'the command'} interrupted; {exc}", exc.exit_code)
    except BonesegError as exc:
        _fail(str(exc), exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        if state["finished"] is not None:  # after the command returned: its outputs are in place
            print(f"Warning: interrupted after {state['command'] or 'the command'} had finished", file=sys.stderr)
            sys.exit(state["finished"])
        _fail(f"{state['command']} interrupted; {Interrupted()}" if state["command"] else "interrupted", 130)
    except MemoryError as exc:
        _fail(out_of_memory(exc, state["command"]) or "out of memory", 1)
    except BrokenPipeError:
        if not _stdout_closed():
            _fail("Broken pipe", 1)
        _quiet_exit_on_closed_stdout()
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        if isinstance(exc, FileExistsError) and where:  # mkdir of an output folder where a file is
            _fail(f"{where}exists and is not a folder", 1)
        if isinstance(exc, NotADirectoryError) and where:
            _fail(f"{where}a part of this path is a file, not a folder", 1)
        _fail(f"{where}{exc.strerror or exc}", 1)
    except Exception as exc:  # an unexpected failure still gets one line unless --debug
        oom = out_of_memory(exc, state["command"])
        if oom is not None:
            _fail(oom, 1)
        _fail(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)
    sys.exit(code)


def _invoke(command, argv: list[str], own_process: bool) -> int:
    """Run the command line; its exit code once it has finished (recorded in ``state["finished"]``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", BonesegWarning)
            warnings.showwarning = _show_warning
            with command.make_context("boneseg", argv) as ctx:
                command.invoke(ctx)
        code = 0
    except typer.Exit as exc:
        code = exc.exit_code
    except getattr(_click, "NoArgsIsHelpError", ()) as exc:  # bare `boneseg`: the help, not an error
        if exc.format_message():  # rich help is printed as the exception is made; plain text is not
            print(exc.format_message())
        code = 0
    state["finished"] = code
    if own_process and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):  # through the flush and the interpreter's exit
            signal.signal(signum, signal.SIG_IGN)
    sys.stdout.flush()
    return code


def _usage_message(exc: typing.Any) -> str:
    """A click usage error as one line naming the command and the option or argument at fault."""
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else " ".join(["boneseg", state["command"] or ""]).strip() + ": "
    if isinstance(exc, _click.NoSuchOption) and ctx is not None:
        names = [
            o
            for p in ctx.command.params
            if not getattr(p, "hidden", False)
            for o in (*p.opts, *p.secondary_opts)
            if o.startswith("--")
        ] + ["--help"]
        return f"{where}no such option {quote(exc.option_name)}{suggest(exc.option_name, names, 5)}"
    text = " ".join(exc.format_message().split()).rstrip(".")
    return where + (text[:1].lower() + text[1:])


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning as one ``Warning: …`` line: boneseg's (`BonesegWarning`) as they are, other libraries'
    (torch, timm …) with their kind and origin, never a quoted source line; the Python way with ``--debug``."""
    if issubclass(category, BonesegWarning):
        print(f"Warning: {message}", file=sys.stderr)
    elif state["debug"]:
        print(warnings.formatwarning(message, category, filename, lineno, line), file=sys.stderr, end="")
    else:
        text = " ".join(str(message).split())
        text = text if len(text) <= 300 else text[:300] + "…"
        where = os.path.basename(str(filename))
        print(f"Warning: {text} ({category.__name__} from {where}:{lineno})", file=sys.stderr)


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (e.g. from a job scheduler or torchrun) unwinds like Ctrl-C, so partial outputs are removed."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _stdout_closed() -> bool:
    """Whether the reader of stdout has gone (e.g. ``boneseg … | head``), as opposed to another pipe."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _quiet_exit_on_closed_stdout() -> None:
    """Exit silently with 1 when stdout's reader has gone (as rich and Python itself do)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush finds no pipe
    sys.exit(1)


def _fail(message: str, code: int) -> None:
    if state["debug"]:
        traceback.print_exc()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: say which rank speaks
        message = f"[rank {os.environ.get('RANK', '?')}] {message}"
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(code)
