"""`boneseg synth`."""
from __future__ import annotations

from boneseg.cli.app import app, not_implemented


@app.command("synth", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def synth_command() -> None:
    """(not implemented yet)"""
    not_implemented("synth")
