"""Every `boneseg …` command line in the README, docs/ and examples/ names a real command and real options,
with values of the right kind: the docs cannot drift from the CLI unnoticed."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import typer

from boneseg.cli import app

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").glob("*.sh"))]
SHELL_VARIABLE = re.compile(r"\$\{?(\w+)\}?")  # $k, ${v}: a value the block sets, else 0
COMMAND = typer.main.get_command(app)
click = importlib.import_module(typer.BadParameter.__module__)  # the click Typer uses (it may vendor one)


def _blocks(path: Path) -> list[str]:
    """The shell code of a file: a script whole, a markdown file's fenced blocks (not python or json ones)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".sh":
        return [text]
    blocks = re.findall(r"^```([\w+-]*)\n(.*?)^```", text, flags=re.S | re.M)
    return [body for lang, body in blocks if lang in ("", "bash", "sh", "shell", "console")]


def _variables(blocks: list[str]) -> dict[str, str]:
    """Shell variables a file's blocks set (``COMMON="--splits splits.json …"``)."""
    return dict(re.findall(r"^\s*(\w+)=[\"']?([^\"'\n]*)[\"']?\s*$", "\n".join(blocks), flags=re.M))


def _command_lines(code: str, variables: dict[str, str]) -> list[str]:
    """`boneseg …` invocations, continuation lines joined, shell variables the file sets expanded; lines
    the block shows failing (an ``Error:`` line follows) and synopses (``[--option …]``) left out."""
    lines = code.replace("\\\n", " ").splitlines()
    out = []
    for i, line in enumerate(lines):
        line = line.strip().removeprefix("$ ")
        following = next((n.strip() for n in lines[i + 1 :] if n.strip()), "")
        if following.startswith("Error:") or re.search(r"\[-", line):
            continue
        line = SHELL_VARIABLE.sub(lambda m: variables.get(m.group(1), "0"), line)
        for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
            part = re.sub(r"^(?:for|do|then|else)\b.*?(?=boneseg\b)", "", part.strip())
            part = re.sub(r"^(?:torchrun\b.*?-m |python -m )boneseg\b", "boneseg", part)
            if part.startswith("boneseg "):
                out.append(part)
    return out


def _cases() -> list[tuple[str, str]]:
    cases = []
    for path in SOURCES:
        blocks = _blocks(path)
        for block in blocks:
            for line in _command_lines(block, _variables(blocks)):
                cases.append((str(path.relative_to(ROOT)), line))
    return cases


CASES = _cases()


def test_the_docs_have_command_lines_to_check():
    assert len(CASES) > 120 and {"README.md", "examples/tour.sh", "docs/train.md"} <= {c[0] for c in CASES}


@pytest.mark.parametrize("source, line", CASES, ids=[f"{s}:{i}" for i, (s, _) in enumerate(CASES)])
def test_documented_command_line_parses(source, line):
    if "…" in line or "..." in line:  # an elided example: check the command name only
        line = line.split("…")[0].split("...")[0]
    code = re.sub(r"\s\d?>>?\s*(&\d|\S+)", " ", line.split(" #")[0])  # without comments and redirections
    try:
        words = shlex.split(code)[1:]
    except ValueError:  # an unbalanced quote that an elision cut
        return
    if not words or words[0] in ("--help", "-h", "--install-completion", "--version"):
        return
    name = words[0]
    assert name in COMMAND.commands, f"{source}: `boneseg {name}`: no such command"
    command = COMMAND.commands[name]
    args = [w for w in words[1:] if w not in ("-h", "--help")]
    if len(args) != len(words) - 1:
        return
    try:
        command.make_context(f"boneseg {name}", args)
    except (click.NoSuchOption, click.BadOptionUsage) as exc:
        pytest.fail(f"{source}: `{line}`: {exc.format_message()}")
    except click.BadParameter as exc:
        if not isinstance(exc, click.MissingParameter) and "does not exist" not in exc.format_message():
            pytest.fail(f"{source}: `{line}`: {exc.format_message()}")
    except click.UsageError as exc:
        if "extra argument" in exc.format_message() and "…" not in line and "..." not in line:
            pytest.fail(f"{source}: `{line}`: {exc.format_message()}")


def test_tour_script_runs_exactly_the_readme_tour():
    """examples/tour.sh claims to run the README's tour as is: the same commands, line for line."""
    readme = next(b for b in _blocks(ROOT / "README.md") if b.startswith("boneseg synth data"))
    script = (ROOT / "examples" / "tour.sh").read_text(encoding="utf-8")
    assert script[script.index("boneseg synth data") :] == readme
    assert re.search(r"^export OMP_NUM_THREADS=1\b", script, flags=re.M)  # the "one thread" it and the README time


LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)
NAMED_DOC = re.compile(r"`([\w./-]+\.md)`")  # a doc named in code spans


@pytest.mark.parametrize("source", [p for p in SOURCES if p.suffix == ".md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_link_and_name_only_files_that_exist(source):
    """A relative link (`[x](data.md)`, `![](img/x.png)`) or a doc named in a code span resolves to a file."""
    text = source.read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"\w+:", t) and not t.startswith("#")]
    broken = [t for t in targets if t and not (source.parent / t).exists()]
    broken += [n for n in NAMED_DOC.findall(text) if not any((d / n).exists() for d in (source.parent, ROOT))]
    assert broken == []
