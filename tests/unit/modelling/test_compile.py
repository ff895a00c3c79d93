"""`--compile` on train and predict: the same results as uncompiled, and a one-line warning with an uncompiled
run where torch.compile fails (when called or at the first forward). The compiler itself is torch's eager
backend here: inductor needs about a minute per model on a small CPU."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from util import tiny_config, write_dataset

from boneseg.cli import main
from boneseg.modelling.models import build_model
from boneseg.runs.checkpoint import load_checkpoint, save_checkpoint

REAL_COMPILE = torch.compile


def eager_compile(monkeypatch) -> list:
    """torch.compile with the eager backend (real Dynamo tracing, no C compiler); returns the modules given."""
    given: list = []

    def compile_(model, **kw):
        given.append(model)
        return REAL_COMPILE(model, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_)
    return given


def broken_compile(monkeypatch, when: str) -> None:
    """torch.compile failing `when` "called" or at the first "forward" of the compiled model."""

    def compile_(model, **kw):
        if when == "called":
            raise RuntimeError("Dynamo is not supported on this Python\nmore detail")

        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", compile_)


def cli(*args) -> tuple[int, str]:
    """`boneseg ARGS` in-process: (exit code, stderr squeezed to one line)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([*map(str, args)])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, " ".join(err.getvalue().split())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compile")
    write_dataset(root / "data", patients=2, size=64)
    for name, extra in {"plain": {}, "film": {"meta": "film"}}.items():
        cfg = tiny_config(root / "data", root / name, **extra)
        torch.manual_seed(0)
        save_checkpoint(
            root / f"{name}.pt",
            {"config": cfg, "model": build_model(cfg).state_dict(), "epoch": 1, "step": 1, "metrics": {}},
        )
    return root


def train(data: Path, out: Path, *extra) -> tuple[int, str]:
    return cli(
        "train", data / "data", "--arch", "unet", "--encoder", "resnet18", "--size", "64", "--epochs", "1",
        "--batch-size", "2", "--encoder-weights", "none", "--workers", "0", "--device", "cpu", "--max-steps", "2",
        "--aug", "none", "--cache-dir", data / "cache", "--out", out, *extra,
    )  # fmt: skip


def weights(run: Path) -> dict:
    return load_checkpoint(run / "last.pt")["model"]


@pytest.mark.parametrize("mode", ["works", "called", "forward"])
def test_train_compile_equals_uncompiled(data, tmp_path, monkeypatch, mode):
    code, err = train(data, tmp_path / "plain")
    assert code == 0, err
    given = eager_compile(monkeypatch) if mode == "works" else broken_compile(monkeypatch, mode)
    code, err = train(data, tmp_path / "compiled", "--compile")
    assert code == 0, err
    if mode == "works":
        assert len(given) == 1 and "Warning" not in err, err
    else:
        assert err.count("Warning: --compile: torch.compile failed (RuntimeError: ") == 1, err
        assert "running the model uncompiled" in err and "more detail" not in err
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "compiled")
    assert a.keys() == b.keys()  # the bare model's names: no wrapper prefix in the checkpoint
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert "compile" not in json.loads((tmp_path / "compiled" / "config.json").read_text())  # a runtime option


def predict(data: Path, model: str, out: Path, *extra) -> tuple[int, str]:
    return cli(
        "predict", data / "data", "-m", data / model, "--tta", "hflip", "--workers", "0", "--device", "cpu",
        "-o", out, "--save-probs", out.with_suffix(""), *extra,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["works", "called", "forward"])
def test_predict_compile_equals_uncompiled(data, tmp_path, monkeypatch, mode):
    code, err = predict(data, "plain.pt", tmp_path / "plain.csv")
    assert code == 0, err
    given = eager_compile(monkeypatch) if mode == "works" else broken_compile(monkeypatch, mode)
    code, err = predict(data, "plain.pt", tmp_path / "compiled.csv", "--compile")
    assert code == 0, err
    if mode == "works":
        assert len(given) == 1 and "Warning" not in err, err
    else:
        assert err.count("Warning: --compile: torch.compile failed") == 1, err
    assert (tmp_path / "plain.csv").read_text() == (tmp_path / "compiled.csv").read_text()
    files = {p.name: p.read_bytes() for p in (tmp_path / "plain").iterdir() if p.name != "manifest.json"}
    assert files and files == {p.name: p.read_bytes() for p in (tmp_path / "compiled").iterdir() if p.name in files}


def test_predict_compile_keeps_film_metadata(data, tmp_path, monkeypatch):
    """A compiled FiLM model is still seen as one (the metadata stage looks under the compile wrapper)."""
    eager_compile(monkeypatch)
    images = tmp_path / "images"
    images.mkdir()
    for png in (data / "data" / "test" / "DCM").rglob("*.png"):
        (images / png.name).write_bytes(png.read_bytes())
    code, err = cli("predict", images, "-m", data / "film.pt", "--workers", "0", "--device", "cpu", "-o",
                    tmp_path / "o.csv", "--compile")  # fmt: skip
    assert code == 0, err
    assert "Warning: a FiLM (--meta film) model runs without patient metadata" in err


@pytest.mark.parametrize("mode", ["called", "forward"])
def test_predict_ensemble_fallback_warns_once(data, tmp_path, monkeypatch, mode):
    broken_compile(monkeypatch, mode)
    code, err = predict(data, "plain.pt", tmp_path / "o.csv", "-m", data / "plain.pt", "--compile")
    assert code == 0 and err.count("--compile: torch.compile failed") == 1, err
