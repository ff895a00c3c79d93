"""`boneseg check`."""
from __future__ import annotations

from boneseg.cli.app import app, not_implemented


@app.command("check", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def check_command() -> None:
    """(not implemented yet)"""
    not_implemented("check")
