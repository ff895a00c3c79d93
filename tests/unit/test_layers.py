"""The package's layers (docs/architecture.md): every import, top-level or inside a function, goes to the
same layer or a lower one, the library never imports the CLI, and no modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import boneseg

LAYERS = ("formats", "data", "modelling", "runs", "engine", "inference", "workflows", "cli")
"""Bottom-up; the formats layer is the top-level modules of ``boneseg``."""

SRC = Path(boneseg.__file__).parent


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under `root` (the ``boneseg`` package folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer(module: str) -> int:
    """The layer index of a ``boneseg`` module (``__main__`` runs the CLI)."""
    parts = module.split(".")
    if parts[1:2] == ["__main__"]:
        return LAYERS.index("cli")
    return LAYERS.index(parts[1]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else 0


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The ``boneseg`` modules `module` imports anywhere in its file (``import_module("…")`` included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(node.args[0].value)
    return {m for m in found if m == "boneseg" or m.startswith("boneseg.")} - {module}


def graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the ``boneseg`` modules it imports."""
    mods = modules(root)
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def upward(g: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer to a higher one, as ``a -> b`` lines."""
    return sorted(
        f"{a} ({LAYERS[layer(a)]}) -> {b} ({LAYERS[layer(b)]})"
        for a, targets in g.items()
        for b in targets
        if layer(b) > layer(a)
    )


def cycle(g: dict[str, set[str]]) -> list[str]:
    """One import cycle as a module list (first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(path: list[str]) -> list[str]:  # path ends with the module visited
        state[path[-1]] = 1
        for n in sorted(g.get(path[-1], ())):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(path + [n])):
                return found
        state[path[-1]] = 2
        return []

    for m in sorted(g):
        if m not in state and (found := visit([m])):
            return found
    return []


def test_the_library_never_imports_the_cli():
    g = graph()
    offenders = sorted(
        f"{a} -> {b}"
        for a, targets in g.items()
        if layer(a) < LAYERS.index("cli")
        for b in targets
        if layer(b) == LAYERS.index("cli")
    )
    assert not offenders, offenders


def test_imports_point_down():
    assert not upward(graph())


def test_no_import_cycles():
    assert not cycle(graph())


def test_the_checks_see_nested_relative_and_cyclic_imports(tmp_path):
    pkg = tmp_path / "boneseg"
    for sub in ("data", "cli"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "io.py").write_text("def f():\n    from .rle import g\n")
    (pkg / "rle.py").write_text("import boneseg.io\n")
    (pkg / "data" / "dataset.py").write_text("def f():\n    from boneseg.cli.output import console\n")
    (pkg / "cli" / "output.py").write_text("from .. import io\n")
    g = graph(pkg)
    assert upward(g) == ["boneseg.data.dataset (data) -> boneseg.cli.output (cli)"]
    assert g["boneseg.cli.output"] == {"boneseg.io"}
    assert cycle(g) in (["boneseg.io", "boneseg.rle", "boneseg.io"], ["boneseg.rle", "boneseg.io", "boneseg.rle"])


def test_prediction_does_not_depend_on_training():
    """The run format (`boneseg.runs`) sits below training and inference: predicting imports nothing of the
    training engine but its device/process helpers, and a workflow takes only the `train` entry point."""
    offenders = []
    for module, path in modules(SRC).items():
        top = module.split(".")[1:2]
        if top not in (["inference"], ["workflows"], ["runs"]):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("boneseg.engine"):
                names = {a.name for a in node.names}
                allowed = node.module == "boneseg.engine.distributed" and top != ["runs"]
                allowed |= node.module == "boneseg.engine.train" and top == ["workflows"] and names == {"train"}
                if not allowed:
                    offenders.append(f"{module}: from {node.module} import {', '.join(sorted(names))}")
            elif isinstance(node, ast.Import) and any(a.name.startswith("boneseg.engine") for a in node.names):
                offenders.append(f"{module}: import {', '.join(a.name for a in node.names)}")
    assert not offenders, offenders
