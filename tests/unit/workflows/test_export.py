"""`boneseg export` (ONNX, TorchScript, Hugging Face folder) and `predict -m` on exports: same probabilities,
same CSV as the torch checkpoint, the sidecar's thresholds and rules applied, refusals in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from util import cli, tiny_config, write_dataset

from boneseg import CLASSES
from boneseg.data.layout import find_images
from boneseg.engine.train import train
from boneseg.inference import Policy, Predictor, load_models
from boneseg.inference.pipeline import ImageDataset
from boneseg.modelling.models import build_model
from boneseg.runs.checkpoint import save_checkpoint
from boneseg.runs.config import TrainConfig

FORMATS = ["onnx", "torchscript", "hf"]


OUT = {"onnx": "model.onnx", "torchscript": "model.ts", "hf": "model-hf"}


def needs(fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data of 96² images, two tiny runs trained at 64² that differ by seed): resize mode upsamples."""
    root = tmp_path_factory.mktemp("export")
    data = write_dataset(root / "data", size=96)
    runs = [root / f"run{s}" for s in (0, 1)]
    for s, run in enumerate(runs):
        train(TrainConfig.from_any(tiny_config(data, run, epochs=2, seed=s)))
    return data, runs


def probs_of(models, data, policy: str) -> torch.Tensor:
    """Probabilities of every test image under a TTA `policy`, stacked, through the predictor."""
    predictor = Predictor(load_models(models, torch.device("cpu"), trust_model=True), "cpu", window=32)
    tta = Policy.parse(policy)
    ds = ImageDataset(find_images(data), predictor.plan([tta]))
    return torch.stack([predictor.predict(ds[i], tta) for i in range(len(ds))])


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reproduces_torch(fmt, trained, tmp_path, capsys):
    """The export's probabilities within 1e-4 of torch's (sliding and resize mode, where the logits are upsampled
    before the sigmoid in both); `predict -m EXPORT` writes the torch CSV byte for byte."""
    needs(fmt)
    data, runs = trained
    out = tmp_path / OUT[fmt]
    code, stdout, err = cli(capsys, "export", runs[0], "--format", fmt, "-o", out)
    assert code == 0, err
    for policy in ("resize:hflip+scale", "sliding:hflip"):
        assert (probs_of([out], data, policy) - probs_of([runs[0]], data, policy)).abs().max() < 1e-4
    trust = ["--trust-model"] if fmt == "torchscript" else []
    for m, csv in ((runs[0], "torch.csv"), (out, "export.csv")):
        code, _, err = cli(
            capsys, "predict", data, "-m", m, "-o", tmp_path / csv, "--workers", "0", "--device", "cpu", *trust
        )
        assert code == 0, err
    code, stdout, err = cli(capsys, "predict", data, "-m", out, "--workers", "0", "--device", "cpu", *trust)  # CSV only
    assert stdout == (tmp_path / "torch.csv").read_text()
    assert "Warning" not in err, err
    assert (tmp_path / "export.csv").read_bytes() == (tmp_path / "torch.csv").read_bytes()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_several_runs_are_one_graph_of_averaged_probabilities(fmt, trained, tmp_path, capsys):
    needs(fmt)
    data, runs = trained
    out = tmp_path / OUT[fmt]
    assert cli(capsys, "export", *runs, "--format", fmt, "-o", out, "--weights", "1,3")[0] == 0
    assert len(json.loads(out.with_name(out.name + ".json").read_text())["models"]) == 2
    reference = [runs[0], runs[1]]
    want = Predictor(load_models(reference, torch.device("cpu"), [1, 3]), "cpu")
    got = Predictor(load_models([out], torch.device("cpu"), trust_model=True), "cpu")
    ds = ImageDataset(find_images(data), want.plan([Policy.parse("none")]))
    for i in range(len(ds)):
        assert (got.predict(ds[i], Policy.parse("none")) - want.predict(ds[i], Policy.parse("none"))).abs().max() < 1e-4


def test_hf_folder_loads_offline_with_smp(trained, tmp_path, capsys, monkeypatch):
    import segmentation_models_pytorch as smp

    data, runs = trained
    out = tmp_path / "hf"
    assert cli(capsys, "export", runs[0], "--format", "hf", "-o", out)[0] == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = smp.from_pretrained(str(out)).eval()
    reference = load_models([runs[0]], torch.device("cpu"))[0].model
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    card = (out / "README.md").read_text()
    assert all(c in card for c in ("Pisiform", "Validation Dice", "from_pretrained", "finger-19 |"))
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "boneseg.json", "README.md"}


def test_the_sidecar_carries_thresholds_and_rules(trained, tmp_path, capsys):
    """predict -m EXPORT applies the thresholds and post-processing given at export time, as predict on the run
    would."""
    data, runs = trained
    thresholds = tmp_path / "t.json"
    thresholds.write_text(json.dumps({c: 0.3 + 0.01 * i for i, c in enumerate(CLASSES)}))
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"classes": {c: {"keep_largest": True, "min_area": 3} for c in CLASSES}}))
    out = tmp_path / "m.ts"
    assert (
        cli(capsys, "export", runs[0], "-f", "torchscript", "-o", out, "-t", thresholds, "--postprocess", rules)[0] == 0
    )
    opts = ("--workers", "0", "--device", "cpu")
    assert (
        cli(
            capsys,
            "predict",
            data,
            "-m",
            runs[0],
            "-o",
            tmp_path / "a.csv",
            "-t",
            thresholds,
            "--postprocess",
            rules,
            *opts,
        )[0]
        == 0
    )
    assert cli(capsys, "predict", data, "-m", out, "-o", tmp_path / "b.csv", "--trust-model", *opts)[0] == 0
    assert cli(capsys, "predict", data, "-m", runs[0], "-o", tmp_path / "c.csv", *opts)[0] == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text() != (tmp_path / "c.csv").read_text()


def _checkpoint(path: Path, **extra) -> Path:
    config = {
        "arch": "unet",
        "encoder": "resnet18",
        "size": 64,
        "in_channels": 1,
        "channels": "gray",
        "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]},
        **extra,
    }
    save_checkpoint(
        path, {"config": config, "model": build_model(config).state_dict(), "epoch": 0, "step": 0, "metrics": {}}
    )
    return path


@pytest.mark.parametrize(
    "case, exit_code, words",
    [
        ("film", 2, "FiLM model"),
        ("wrist", 2, "wrist second-stage"),
        ("format", 2, "--format 'tflite'"),
        ("hf-two", 2, "holds one smp model"),
        ("disagree", 2, "size 96 differs"),
        ("exists", 1, "already exists"),
        ("stdout", 2, "--out -: an export is a model file"),
        ("no-sidecar", 1, "no sidecar"),
        ("old-sidecar", 1, "sidecar version 1, this boneseg reads version 4"),
    ],
)
def test_refusals_are_one_line(case, exit_code, words, trained, tmp_path, capsys, monkeypatch):
    data, runs = trained
    fmt, out, args = "torchscript", tmp_path / "m.ts", [runs[0]]
    if case == "film":
        args = [_checkpoint(tmp_path / "film.pt", meta="film")]
    elif case == "wrist":
        args = [_checkpoint(tmp_path / "wrist.pt", wrist=True, classes=list(CLASSES[19:27]))]
    elif case == "format":
        fmt = "tflite"
    elif case == "hf-two":
        fmt, args = "hf", runs
    elif case == "disagree":
        args = [runs[0], _checkpoint(tmp_path / "big.pt", size=96)]
    elif case == "exists":
        out.write_text("keep")
    elif case == "stdout":  # not a file named "-"
        monkeypatch.chdir(tmp_path)
        out = Path("-")
    if case == "no-sidecar":
        (tmp_path / "m.onnx").write_bytes(b"not onnx")
        code, _, err = cli(capsys, "predict", data, "-m", tmp_path / "m.onnx", "-o", tmp_path / "p.csv")
    elif case == "old-sidecar":  # version 1 graphs took no output size: refused, not run with a wrong call
        assert cli(capsys, "export", *args, "--format", fmt, "-o", out)[0] == 0
        sidecar = out.with_name(out.name + ".json")
        sidecar.write_text(json.dumps(dict(json.loads(sidecar.read_text()), version=1)))
        code, _, err = cli(capsys, "predict", data, "-m", out, "-o", tmp_path / "p.csv")
    else:
        code, _, err = cli(capsys, "export", *args, "--format", fmt, "-o", out)
    assert code == exit_code, err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in err, err
    if case == "exists":
        assert out.read_text() == "keep" and not out.with_name("m.ts.json").exists()
    elif case not in ("no-sidecar", "old-sidecar"):
        assert not out.exists() and not out.with_name(out.name + ".json").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize(
    "edit, culprit",
    [
        ({"thresholds": {"finger-1": 1.5}}, "class 'finger-1': threshold 1.5: must be within [0, 1]"),
        ({"thresholds": "0.4.json"}, "'thresholds' must be a {class: threshold} mapping"),
        ({"in_channels": 3}, "in_channels 3 does not match channels 'gray'"),
        ({"channels": "rgb"}, "in_channels 1 does not match channels 'rgb'"),
        ({"mean": [0.4, 0.4]}, "mean [0.4, 0.4]: expected 1 finite number"),
        ({"std": [0.0]}, "std [0.0]: must be positive"),
        ({"size": "64"}, "size is '64', expected whole number"),
        ({"crop": 48}, "--crop 48: must be a multiple of 32"),
        ({"unify_side": "X"}, "expected R, L or none"),
        ({"size": None}, "size is 'None', expected whole number"),
        ({"size": 65536}, "--size 65536: at most 8192"),
        ({"integrity_sha256": "0" * 64}, "does not match its model"),
        ({"thresholds": {"finger-1": 0.9}}, "does not match its model"),
        ({"postprocess": None, "unify_side": "L"}, "does not match its model"),
    ],
)
def test_a_sidecar_edited_by_hand_is_refused_naming_it(edit, culprit, trained, tmp_path, capsys):
    """Every setting predict takes from the sidecar is checked as a training option is, and the sidecar must be
    the one written for its model file: one line naming the sidecar, never a traceback or a silent 0.5/no-op."""
    data, runs = trained
    out = tmp_path / "m.ts"
    assert cli(capsys, "export", runs[0], "-f", "torchscript", "-o", out)[0] == 0
    sidecar = out.with_name("m.ts.json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **edit}))
    code, _, err = cli(capsys, "predict", data, "-m", out, "-o", tmp_path / "p.csv", "--workers", "0", "--trust-model")
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert code == 1 and len(lines) == 1 and str(sidecar) in lines[0] and culprit in lines[0], err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("fmt", ["onnx", "hf"])
def test_a_sidecar_beside_another_model_is_refused(fmt, trained, tmp_path, capsys):
    """A sidecar copied beside another export's model (or an hf folder missing a file) is refused before
    anything runs: its settings, thresholds and rules belong to another network."""
    needs(fmt)
    data, runs = trained
    a, b = tmp_path / OUT[fmt], tmp_path / ("b-" + OUT[fmt])
    for run, out in ((runs[0], a), (runs[1], b)):
        assert cli(capsys, "export", run, "-f", fmt, "-o", out)[0] == 0
    if fmt == "hf":
        shutil.copy(a / "model.safetensors", b / "model.safetensors")
    else:
        shutil.copy(a, b)
    code, _, err = cli(capsys, "predict", data, "-m", b, "-o", tmp_path / "p.csv", "--workers", "0")
    assert code == 1 and "does not match its model" in err and "Traceback" not in err, err
    if fmt == "hf":
        (b / "config.json").unlink()
        code, _, err = cli(capsys, "predict", data, "-m", b, "-o", tmp_path / "p.csv", "--workers", "0")
        assert code == 1 and "config.json missing" in err and "huggingface.co" not in err, err


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_network_that_does_not_take_the_sidecars_input_is_one_line(fmt, trained, tmp_path, capsys):
    """A sidecar edited to other channels (in_channels along) meets a network that takes one: one line naming
    the export, for every format (the graphs fail when called, the hf folder's config.json disagrees)."""
    needs(fmt)
    data, runs = trained
    out = tmp_path / OUT[fmt]
    assert cli(capsys, "export", runs[0], "-f", fmt, "-o", out)[0] == 0
    sidecar = out / "boneseg.json" if fmt == "hf" else out.with_name(out.name + ".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "channels": "rgb", "in_channels": 3}))
    code, _, err = cli(capsys, "predict", data, "-m", out, "-o", tmp_path / "p.csv", "--workers", "0", "--trust-model")
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert code == 1 and len(lines) == 1 and str(out) in lines[0] and "Traceback" not in err, err
    assert ("in_channels 1" if fmt == "hf" else "does not match its model") in lines[0], err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("command", ["predict", "tta", "wrist"])
def test_a_torchscript_export_is_loaded_only_with_trust_model(command, trained, tmp_path, capsys, monkeypatch):
    """A TorchScript graph runs its author's code when loaded (``__setstate__``) and run (``forward``): without
    --trust-model it is refused, naming the flag, before torch.jit.load is called; with it, it runs."""
    data, runs = trained
    out = tmp_path / "m.ts"
    assert cli(capsys, "export", runs[0], "-f", "torchscript", "-o", out)[0] == 0
    loads = []
    real = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    args = {
        "predict": ["predict", data, "-m", out, "-o", tmp_path / "p.csv"],
        "tta": ["tta", data, "-m", out, "--policies", "none", "--fold", "0"],
        "wrist": ["predict", data, "-m", runs[0], "--wrist-model", out, "-o", tmp_path / "p.csv"],
    }[command]
    code, _, err = cli(capsys, *args, "--workers", "0", "--device", "cpu")
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert code == 1 and len(lines) == 1 and "--trust-model" in lines[0] and str(out) in lines[0], err
    assert loads == [] and not (tmp_path / "p.csv").exists()
    if command == "predict":
        code, _, err = cli(capsys, *args, "--workers", "0", "--device", "cpu", "--trust-model")
        assert code == 0 and len(loads) == 1, err


def test_the_hash_covers_the_hf_config(trained, tmp_path, capsys):
    """An hf folder's config.json builds the network: an edited one (a sigmoid on top of the logits, which made
    every mask full) is refused, not run."""
    data, runs = trained
    out = tmp_path / "hf"
    assert cli(capsys, "export", runs[0], "-f", "hf", "-o", out)[0] == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(config, activation="sigmoid")))
    code, _, err = cli(capsys, "predict", data, "-m", out, "-o", tmp_path / "p.csv", "--workers", "0")
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert code == 1 and len(lines) == 1 and "does not match its model" in lines[0], err
    assert not (tmp_path / "p.csv").exists()


def test_the_hf_loader_never_goes_online(trained, tmp_path, capsys, monkeypatch):
    """Whatever encoder_weights an hf config names, the network is built without pretrained weights and the
    folder's own loaded: no download is attempted (the socket layer would fail it)."""
    import socket

    from boneseg.inference.exported import load_hf

    data, runs = trained
    out = tmp_path / "hf"
    assert cli(capsys, "export", runs[0], "-f", "hf", "-o", out)[0] == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(config, encoder_weights="imagenet")))
    calls = []
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-cache"))
    monkeypatch.setattr(socket.socket, "connect", lambda *a: calls.append(a) or (_ for _ in ()).throw(OSError("net")))
    model = load_hf(out).eval()
    reference = load_models([runs[0]], torch.device("cpu"))[0].model
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert calls == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_full_disk_is_one_line_and_leaves_nothing(fmt, trained, tmp_path, capsys, monkeypatch):
    """ENOSPC while an export is written (TorchScript's own writer aborted the process, ONNX blamed the model,
    hf printed SafetensorError): one line naming the output, exit 1, no model, sidecar or temp file left."""
    import errno

    import boneseg.workflows.export as export_mod

    needs(fmt)
    data, runs = trained
    full = OSError(errno.ENOSPC, "No space left on device")
    if fmt == "onnx":
        monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (_ for _ in ()).throw(full))
    elif fmt == "torchscript":

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def write(self, data):
                raise full

        monkeypatch.setattr(export_mod, "open", lambda path, mode="r": Full(), raising=False)
    else:
        import segmentation_models_pytorch as smp
        from safetensors import SafetensorError

        def save(self, *a, **k):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(smp.Unet, "save_pretrained", save)
    out = tmp_path / "out" / OUT[fmt]
    out.parent.mkdir()
    code, _, err = cli(capsys, "export", runs[0], "-f", fmt, "-o", out)
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert code == 1 and lines == [f"Error: cannot write {out}: No space left on device"], err
    assert list(out.parent.iterdir()) == []
