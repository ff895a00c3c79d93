"""`python tests/e2e/signal_entry.py SIGNAL MODULE:ATTR N ARGS…` = `boneseg ARGS…`, except that once the
function MODULE.ATTR (``boneseg.submission:SubmissionWriter.write_rles``) has returned N times the process
sends itself SIGNAL (``SIGINT``, ``SIGTERM``): a real signal at a named point of the command, however slow the
machine (signal tests without a race; production code has no such hook)."""

import importlib
import os
import signal
import sys

sig, target, after, args = signal.Signals[sys.argv[1]], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)
calls = {"n": 0}


def signalling(*a, **k):
    result = original(*a, **k)
    calls["n"] += 1
    if calls["n"] == after:
        os.kill(os.getpid(), sig)  # delivered to the main thread before the next bytecode there
    return result


setattr(owner, name, signalling)

from boneseg.cli import main  # noqa: E402

main(args)
