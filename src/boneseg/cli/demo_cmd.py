"""`boneseg demo`."""
from __future__ import annotations

from boneseg.cli.app import app, not_implemented


@app.command("demo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo_command() -> None:
    """(not implemented yet)"""
    not_implemented("demo")
