"""`boneseg tta`."""
from __future__ import annotations

from boneseg.cli.app import app, not_implemented


@app.command("tta", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tta_command() -> None:
    """(not implemented yet)"""
    not_implemented("tta")
