"""The command line reads as one tool: usage errors, interruptions and silent choices are one line each."""

from __future__ import annotations

import json
import re

import pytest
import torch
import typer
from util import TINY, cli, write_dataset

from boneseg import CLASSES
from boneseg.cli import app

COMMANDS = typer.main.get_command(app).commands


def one_error(err: str) -> str:
    """The only stderr line, an `Error:` one."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


def write_csv(path, image="a.png", rle="", header="image_name,class,rle") -> None:
    path.write_text(header + "\n" + "".join(f"{image},{c},{rle}\n" for c in CLASSES))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("surface")
    return write_dataset(root / "data", patients=2)


# -- item 1: usage errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_usage_error_matrix(name, capsys):
    code, _, err = cli(capsys, name, "--no-such-flag")
    line = one_error(err)
    assert code == 2 and f"boneseg {name}" in line and "'--no-such-flag'" in line
    required = [p for p in COMMANDS[name].params if p.required and p.param_type_name == "argument"]
    if required:
        code, _, err = cli(capsys, name)
        line = one_error(err)
        assert code == 2 and "missing argument" in line and required[0].metavar in line
    code, out, _ = cli(capsys, name, "--help")
    assert code == 0 and "Usage" in out and "<bool>" not in out
    # placeholders read like the docs (N, X, PATH, FILE, RUN …), not Python types or {ARGUMENT}
    assert not re.search(r"<(int|str|float|path|list|bool|text)\b[^>]*>", out), out
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["predict", "x", "-m", "y", "--thresh", "0.3"], "did you mean '--threshold'"),
        (["prdict"], "did you mean 'predict'"),
        (["analyze", "a.csv", "--size", "big"], "'--size'"),
        (["ensemble", "a.csv", "--vote", "medium"], "'--vote'"),
        (["predict", "x"], "'--model'"),
        (["check", "a.csv", "b.csv"], "unexpected extra argument"),
        (["train", "d", "--size"], "--size"),
    ],
)
def test_usage_errors_are_one_line(args, fragment, capsys):
    code, _, err = cli(capsys, *args)
    assert code == 2 and fragment in one_error(err)


# -- item 2: interruptions -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command, target, args, kept",
    [
        ("predict", "boneseg.inference.predict", ["imgs", "-m", "run", "-o", "sub.csv"], "(sub.csv unchanged)"),
        ("tta", "boneseg.workflows.validation.evaluate_policies", ["data", "-m", "run"], "no output was written"),
        ("ensemble", "boneseg.workflows.ensemble.hard_vote", ["a.csv", "b.csv", "--out", "e.csv"], "(e.csv unchanged)"),
        (
            "analyze",
            "boneseg.workflows.analysis.analyze",
            ["a.csv", "--out", "plots"],
            "(plots unchanged)",
        ),
    ],
)
def test_interrupt_says_what_was_kept(command, target, args, kept, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    _import_every_module()  # none may first import (and keep) the patched function below
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "a.csv")
    write_csv(tmp_path / "b.csv")
    monkeypatch.setattr(target, interrupted)
    code, _, err = cli(capsys, command, *args)
    line = one_error(err)
    assert code == 130 and line.startswith(f"Error: {command} interrupted") and kept in line and "rerun" in line


def _import_every_module() -> None:
    import importlib
    import pkgutil

    import boneseg

    for info in pkgutil.walk_packages(boneseg.__path__, "boneseg."):
        importlib.import_module(info.name)


# -- item 3: one tool ----------------------------------------------------------------------------------
def test_ensemble_out_and_old_output_alias(tmp_path, capsys):
    write_csv(tmp_path / "a.csv", rle="1 5")
    write_csv(tmp_path / "b.csv", rle="3 5")
    for option, out in (("-o", "o1.csv"), ("--out", "o2.csv"), ("--output", "o3.csv")):
        code, _, err = cli(capsys, "ensemble", tmp_path / "a.csv", tmp_path / "b.csv", option, tmp_path / out)
        assert code == 0, err
        assert ",finger-1,3 3" in (tmp_path / out).read_text()
        assert "Warning: a hard vote over 2 inputs keeps only the pixels both predict" in err  # item 7
    _, out, _ = cli(capsys, "ensemble", "--help")
    assert "--output" not in out and "PRED.csv|PROBDIR" in out


def test_long_help_is_grouped_into_panels(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = cli(capsys, "train", "--help")
    panels = re.findall(r"╭─ (.+?) ─", out)
    assert panels[:4] == ["Arguments", "Data", "Model", "Loss"] and "Hardware" in panels, panels
    assert len(out.splitlines()) < 200  # 297 lines in one panel before
    _, out, _ = cli(capsys, "check", "--help")
    assert re.findall(r"╭─ (.+?) ─", out) == ["Arguments", "Options"]  # a short command: one panel


def test_help_texts_match_behaviour(capsys):
    from boneseg.modelling.losses import LOSSES

    _, out, _ = cli(capsys, "train", "--help")
    assert all(name in " ".join(out.split()) for name in LOSSES)
    _, out, _ = cli(capsys, "predict", "--help")
    assert "CUDA only" in " ".join(out.split()) and "[default: amp]" not in out


def test_long_messages_are_not_wrapped_into_a_pipe(tmp_path, capsys):
    bad = "x" * 150
    sub = tmp_path / "sub.csv"
    write_csv(sub, image="a" * 120 + ".png")
    with sub.open("a") as fh:
        fh.write(f"a.png,{bad},\n")
    code, out, err = cli(capsys, "check", sub)
    assert code == 1
    line = next(line for line in err.splitlines() if "unknown class" in line)
    assert line.startswith(str(sub)) and "characters)" in line and len(line) > 80
    code, out, _ = cli(capsys, "check", sub, "--json")
    assert code == 1 and set(json.loads(out)) == {"file", "valid", "problems"}


# -- item 4: boneseg models ----------------------------------------------------------------------------
def test_models_lists_every_registry(capsys):
    from boneseg.data.transforms import AUGMENTATIONS
    from boneseg.inference.tta import TTA_NAMES
    from boneseg.modelling.losses import LOSSES
    from boneseg.modelling.models import ARCHITECTURES
    from boneseg.modelling.registry import OWN_ARCHITECTURES

    code, out, _ = cli(capsys, "models", "--json", "--timm", "resnet1*")
    doc = json.loads(out)
    assert code == 0 and list(doc["architectures"]) == [*ARCHITECTURES, *OWN_ARCHITECTURES]
    assert "unetpp" in doc["architectures"]["unetplusplus"] and "resnet18" in doc["encoders"]["smp"]
    assert "tu-resnet18" in doc["encoders"]["timm"]
    assert doc["losses"] == list(LOSSES) and doc["augmentations"] == list(AUGMENTATIONS)
    assert doc["tta_policies"] == list(TTA_NAMES)
    code, out, _ = cli(capsys, "models")  # into a pipe: one name per line on stdout
    assert code == 0 and "dlv3p\t--arch\t= deeplabv3plus\n" in out and "dtbce\t--loss\n" in out
    assert "efficientnet-b4\t--encoder\n" in out and all(1 < len(line.split("\t")) < 4 for line in out.splitlines())
    assert "sam2unet\t--arch\t" in out and "focal_tversky\t--loss\n" in out and "group\t--norm\n" in out
    code, out, err = cli(capsys, "models", "--timm", "")
    assert (
        code == 2
        and not out
        and one_error(err).endswith("an empty pattern matches no model: give a shell pattern, e.g. 'convnext*'")
    )
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "--install-completion" in out


# -- items 5 and 6: quoted data is short, refusals say why ------------------------------------------------
def test_missing_header_quotes_a_few_characters(tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text("".join(f"a.png,{c},{' '.join(map(str, range(1, 400)))}\n" for c in CLASSES))
    code, _, err = cli(capsys, "check", sub)
    line = next(line for line in err.splitlines() if "wrong header" in line)
    assert code == 1 and len(line) < 200 and "characters)" in line


def test_unsafe_checkpoint_refusal_says_why(tiny_data, tmp_path, capsys):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": Evil()}, evil)
    code, _, err = cli(capsys, "predict", tiny_data, "-m", evil, "-o", tmp_path / "sub.csv")
    line = one_error(err)
    assert code == 1 and "refused" in line and "could run code" in line and "weights_only=False" not in line


@pytest.mark.parametrize("content", ["evil", "corrupt"])
@pytest.mark.parametrize(
    "where",
    [
        ["train", "--encoder-weights"],
        ["train", "--arch", "sam2unet", "--encoder", "sam2_hiera_tiny", "--encoder-weights"],
        ["train", "--init-from"],
        ["predict", "-m"],
    ],
    ids=["encoder-weights", "sam2-release", "init-from", "predict"],
)
def test_every_foreign_file_is_refused_alike(where, content, tiny_data, tmp_path, capsys):
    """Wherever a model file from elsewhere is read, a pickled object or a corrupt file is one line that says
    why and never relays torch's advice to load it with weights_only=False."""
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    bad = tmp_path / "bad.pt"
    if content == "evil":
        torch.save({"model": Evil()}, bad)
    else:
        bad.write_bytes(b"not a checkpoint")
    command, *option = where
    args = [*TINY, "--out", tmp_path / "run"] if command == "train" else ["-o", tmp_path / "sub.csv"]
    if "--arch" in option:
        named = {"--arch", "--encoder"}
        args = [a for i, a in enumerate(args) if not named & {a, args[i - 1]}]
    code, _, err = cli(capsys, command, tiny_data, *args, *option, bad)
    line = one_error(err)
    assert code == 1 and str(bad) in line and "weights_only" not in line, line
    assert ("could run code" in line) if content == "evil" else ("corrupt or foreign" in line), line


def test_every_value_placeholder_names_its_values():
    """Help reads like the docs: no option shows the bare TEXT placeholder (a value's name or choices instead)."""
    import click

    bare = [
        f"{name} {param.opts[0]}"
        for name, command in sorted(COMMANDS.items())
        for param in command.get_params(click.Context(command))
        if param.param_type_name == "option"
        and not getattr(param, "is_flag", False)
        and not param.hidden
        and (param.metavar or "").upper() == "TEXT"
    ]
    assert bare == []


# -- item 7: silent choices made visible ---------------------------------------------------------------
def test_partial_encoder_weights_and_fp16_on_cpu_warn(tiny_data, tmp_path, capsys):
    import segmentation_models_pytorch as smp

    data = tiny_data
    state = smp.encoders.get_encoder("resnet18", weights=None).state_dict()
    partial = tmp_path / "partial.pt"
    torch.save({k: v for i, (k, v) in enumerate(state.items()) if i % 10}, partial)
    args = [*TINY[: TINY.index("--encoder-weights")], *TINY[TINY.index("--workers") :]]
    code, _, err = cli(
        capsys,
        "train",
        data,
        *args,
        "--encoder-weights",
        partial,
        "--amp",
        "--amp-dtype",
        "fp16",
        "--max-steps",
        "1",
        "--out",
        tmp_path / "run",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("Warning: ")]
    assert any(re.search(r"partial.pt: \d+ of the encoder's \d+ tensors loaded", w) for w in warned), err
    assert any("fp16 on a CPU" in w for w in warned), err
    rn50 = tmp_path / "rn50.pt"
    torch.save(smp.encoders.get_encoder("resnet50", weights=None).state_dict(), rn50)
    code, _, err = cli(
        capsys,
        "train",
        data,
        *args,
        "--encoder-weights",
        rn50,
        "--max-steps",
        "1",
        "--out",
        tmp_path / "run50",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert code == 1 and "rn50.pt: weights of another encoder than ResNetEncoder" in one_error(err)
    (tmp_path / "run" / "postprocess.json").write_text(json.dumps({"classes": {"Ulna": {"keep_largest": True}}}))
    code, _, err = cli(
        capsys,
        "predict",
        data,
        "-m",
        tmp_path / "run" / "last.pt",
        "-o",
        tmp_path / "sub.csv",
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert code == 0 and "Warning: applying the run's post-processing rules" in err, err
