"""`boneseg pseudo`."""
from __future__ import annotations

from boneseg.cli.app import app, not_implemented


@app.command("pseudo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pseudo_command() -> None:
    """(not implemented yet)"""
    not_implemented("pseudo")
