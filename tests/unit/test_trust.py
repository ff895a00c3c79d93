"""Nothing runs code from a model file by design: every loader in the package is one of the safe ones, found by
walking the source, so a loader added later is checked without anyone listing it."""

from __future__ import annotations

import ast
from pathlib import Path

import boneseg

SRC = Path(boneseg.__file__).parent


def _calls(name: str):
    """(module path, call node) for every call of the dotted `name` (e.g. ``torch.load``) in the package."""
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                yield path.relative_to(SRC).as_posix(), node


def _keyword(node: ast.Call, key: str):
    found = [k.value for k in node.keywords if k.arg == key]
    return ast.literal_eval(found[0]) if found and isinstance(found[0], ast.Constant) else None


def test_every_torch_load_is_weights_only():
    calls = list(_calls("torch.load"))
    assert calls, "no torch.load found: the walk is broken"
    unsafe = [where for where, node in calls if _keyword(node, "weights_only") is not True]
    assert unsafe == []


def test_torchscript_is_loaded_in_one_place_behind_trust():
    """torch.jit.load runs the file's code: only the export runtime calls it, after `Exported` checked
    trust_model (or on a graph `export` itself just wrote)."""
    assert [where for where, _ in _calls("torch.jit.load")] == ["inference/exported.py"]
    source = (SRC / "inference" / "exported.py").read_text(encoding="utf-8")
    assert "RUNS_CODE" in source and "trust_model" in source


def test_no_pickle_and_no_pickled_arrays():
    assert list(_calls("pickle.load")) == [] and list(_calls("pickle.loads")) == []
    for name in ("np.load", "numpy.load"):
        assert all(_keyword(node, "allow_pickle") is False for _, node in _calls(name))


def test_hf_folders_are_never_loaded_through_the_hub():
    """smp's from_pretrained reads encoder_weights from config.json and may download; boneseg builds the network
    itself (`boneseg.inference.exported.load_hf`)."""
    assert [where for where, _ in _calls("smp.from_pretrained")] == []
