"""`--compile`: a model under ``torch.compile`` that falls back to running as it is where compiling fails."""

from __future__ import annotations

import warnings

import torch

from boneseg.errors import BonesegWarning


class Compiled(torch.nn.Module):
    """`module` run through ``torch.compile``. Compiling happens at the first call (and again for new shapes);
    where it fails (no C compiler, an unsupported operation, a Python torch cannot compile), one
    `BonesegWarning` says why and every later call runs `module` uncompiled. Parameters, modes and devices are
    `module`'s own (``.module``, as under DDP); checkpoints are taken from `module`, never from this wrapper."""

    def __init__(self, module: torch.nn.Module, **options):
        super().__init__()
        self.module = module
        try:
            compiled = torch.compile(module, **options)
        except Exception as e:  # noqa: BLE001 - any failure of the compiler means: run uncompiled
            compiled = None
            _fall_back(e)
        # kept out of the module tree: it holds `module` again, whose parameters must appear once
        self.__dict__["compiled"] = compiled

    def forward(self, *args, **kwargs):
        compiled = self.__dict__["compiled"]
        if compiled is not None:
            try:
                return compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a genuine error of the model is raised again below
                self.__dict__["compiled"] = None
                _fall_back(e)
        return self.module(*args, **kwargs)


def _fall_back(error: Exception) -> None:
    reason = (str(error).strip().splitlines() or [""])[0][:200]
    warnings.warn(
        f"--compile: torch.compile failed ({type(error).__name__}: {reason}); running the model uncompiled",
        BonesegWarning,
        stacklevel=3,
    )


def compile_model(model, **options):
    """`model` wrapped in `Compiled` (`options` go to ``torch.compile``, e.g. ``backend``) when it is a torch
    module; anything else (an exported graph) as it is, with a `BonesegWarning`."""
    if isinstance(model, torch.nn.Module):
        return Compiled(model, **options)
    warnings.warn(
        f"--compile: {type(model).__name__} is not a torch model; running it as it is", BonesegWarning, stacklevel=2
    )
    return model
