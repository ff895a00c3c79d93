"""`--compile`: a model under ``torch.compile`` that falls back to running as it is where compiling fails."""

from __future__ import annotations

import warnings

import torch

from boneseg.errors import BonesegWarning


class Compiled(torch.nn.Module):
    """`module` run through ``torch.compile``. Compiling happens at the first call (and again for new shapes);
    where it fails (no C compiler, an unsupported operation, a Python torch cannot compile), one
    `BonesegWarning` says why and every later call runs `module` uncompiled. Parameters, modes and devices are
    `module`'s own (``.module``, as under DDP); checkpoints are taken from `module`, never from this wrapper.
    Wrappers given the same `warned` set (the models of one ensemble) give each warning once between them."""

    def __init__(self, module: torch.nn.Module, warned: set[str] | None = None, **options):
        super().__init__()
        self.module = module
        self.__dict__["warned"] = set() if warned is None else warned
        try:
            compiled = torch.compile(module, **options)
        except Exception as e:  # noqa: BLE001 - any failure of the compiler means: run uncompiled
            compiled = None
            self._fall_back(e)
        # kept out of the module tree: it holds `module` again, whose parameters must appear once
        self.__dict__["compiled"] = compiled

    def forward(self, *args, **kwargs):
        compiled = self.__dict__["compiled"]
        if compiled is not None:
            try:
                return compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a genuine error of the model is raised again below
                self.__dict__["compiled"] = None
                self._fall_back(e)
        return self.module(*args, **kwargs)

    def _fall_back(self, error: Exception) -> None:
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        _warn_once(
            f"--compile: torch.compile failed ({type(error).__name__}: {reason}); running the model uncompiled",
            self.__dict__["warned"],
        )


def _warn_once(message: str, warned: set[str]) -> None:
    if message not in warned:
        warned.add(message)
        warnings.warn(message, BonesegWarning, stacklevel=4)


def compile_model(model, warned: set[str] | None = None, **options):
    """`model` wrapped in `Compiled` (`options` go to ``torch.compile``, e.g. ``backend``) when it is a torch
    module; anything else (an exported graph) as it is, with a `BonesegWarning`. Models compiled with one
    `warned` set share their warnings: each is given once."""
    warned = set() if warned is None else warned
    if isinstance(model, torch.nn.Module):
        return Compiled(model, warned, **options)
    _warn_once(f"--compile: {type(model).__name__} is not a torch model; running it as it is", warned)
    return model
