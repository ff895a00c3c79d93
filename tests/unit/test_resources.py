"""Resource errors (memory, sizes) and files with two answers (duplicate keys, two spellings of one option):
one line naming the culprit, the documented exit code, nothing written."""

from __future__ import annotations

import json

import pytest
from util import TINY, cli, error_line, write_dataset

from boneseg.errors import DataError, UsageError, out_of_memory

CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 140737488355328 bytes. Error code 12 (Cannot allocate memory)"
)


# -- out of memory ---------------------------------------------------------------------------------------------


def test_out_of_memory_is_one_line_naming_what_ran_out():
    import torch

    assert out_of_memory(RuntimeError(CPU_OOM), "train") == (
        "train ran out of CPU memory allocating 128.0 TiB: try a smaller --batch-size, --size/--crop or --window "
        "(or fewer --workers); what was written before is kept"
    )
    cuda = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 1 has a total capacity of 79.19 GiB of which 3.50 GiB "
        "is free. Including non-PyTorch memory, this process has 75.68 GiB memory in use."
    )
    assert "out of GPU memory (GPU 1) allocating 20.00 GiB: try a smaller --batch-size" in out_of_memory(cuda)
    assert "out of CPU memory" in out_of_memory(MemoryError())
    assert out_of_memory(RuntimeError("shape mismatch")) is None


def test_out_of_memory_in_training_is_one_line(tmp_path, capsys, monkeypatch):
    """torch's allocator failure mid-run printed `RuntimeError: [enforce fail at alloc_cpu.cpp…]`."""
    import boneseg.engine.train as engine

    def oom(*args, **kwargs):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(engine, "train_epoch", oom)
    data = write_dataset(tmp_path / "data")
    code, _, err = cli(capsys, "train", data, *TINY, "--out", tmp_path / "run", "--workers", "0")
    line = error_line(err)
    assert code == 1 and "train ran out of CPU memory" in line and "--batch-size" in line, err
    assert "alloc_cpu" not in line and not (tmp_path / "run").exists()


# -- one size rule ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["train", "DATA", *TINY, "--size", "65536", "--out", "RUN"],
        ["predict", "DATA", "-m", "RUN", "--size", "65536", "-o", "OUT"],
        ["predict", "DATA", "-m", "RUN", "--sliding", "--window", "65536", "-o", "OUT"],
        ["tta", "DATA", "-m", "RUN", "--size", "16384"],
    ],
)
def test_a_side_past_the_cap_is_refused_up_front(args, tmp_path, capsys):
    """One rule for every model-input side: a 65536² side ran for a minute and then blamed the model."""
    args = [str(tmp_path / a) if a in ("DATA", "RUN", "OUT") else a for a in args]
    code, _, err = cli(capsys, *args)
    assert code == 2 and "at most 8192" in error_line(err), err


def test_the_side_rule_is_one_function():
    from boneseg.data.transforms import MAX_SIDE, check_side

    assert check_side(MAX_SIDE, "--size") == MAX_SIDE
    for bad in (0, 48, MAX_SIDE + 32, True, "64", 64.0):
        with pytest.raises(UsageError, match="--size"):
            check_side(bad, "--size")


# -- files with two answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("c.yaml", "epochs: 1\nbatch-size: 2\nbatch_size: 4\n", "'batch-size' and 'batch_size' both set batch_size"),
        ("c.yaml", "unify_hands: R\nunify_side: L\n", "'unify_hands' and 'unify_side' both set unify_side"),
        ("c.yaml", "epochs: 1\nepochs: 3\n", "line 2: key 'epochs' is given twice"),
        ("c.json", '{"epochs": 1, "epochs": 3}', "key 'epochs' is given twice"),
        ("c.json", '{"batch_size": 1, "batch-size": 3}', "'batch_size' and 'batch-size' both set batch_size"),
        ("c.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
)
def test_a_config_with_two_answers_is_refused_naming_both(name, text, words, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(text)
    data = write_dataset(tmp_path / "data")
    code, _, err = cli(capsys, "train", data, "--config", path, "--out", tmp_path / "run", "--dry-run")
    line = error_line(err)
    assert code in (1, 2) and str(path) in line and words in line, err
    assert "RecursionError" not in line


def test_a_thresholds_file_with_two_answers_is_refused(tmp_path):
    from boneseg.probs import read_thresholds

    twice = tmp_path / "twice.json"
    twice.write_text('{"Radius": 0.3, "Ulna": 0.4, "Radius": 0.6}')
    with pytest.raises(DataError, match="twice.json: key 'Radius' is given twice"):
        read_thresholds(str(twice))
    beside = tmp_path / "beside.json"
    beside.write_text(json.dumps({"thresholds": {"Radius": 0.3}, "Radius": 0.6}))
    with pytest.raises(DataError, match="beside.json: class 'Radius' is given beside the 'thresholds' mapping"):
        read_thresholds(str(beside))
    fine = tmp_path / "fine.json"
    fine.write_text(json.dumps({"thresholds": {"Radius": 0.3}, "policy": "none"}))
    assert read_thresholds(str(fine)).min() == 0.3


def test_every_json_reader_refuses_duplicate_keys(tmp_path):
    """Labels, splits, rules, plans and sidecars all go through `boneseg.io.read_json`."""
    from boneseg.io import read_json, read_yaml

    (tmp_path / "a.json").write_text('{"x": {"y": 1, "y": 2}}')
    with pytest.raises(DataError, match="key 'y' is given twice"):
        read_json(tmp_path / "a.json")
    (tmp_path / "b.yaml").write_text("base: &b {x: 1}\nthis:\n  <<: *b\n  x: 2\n")
    assert read_yaml(tmp_path / "b.yaml")["this"] == {"x": 2}  # a merge key's override is not a duplicate


def test_library_warnings_are_one_line_each(tmp_path, capsys, monkeypatch):
    """A torch/timm UserWarning printed its source line before the `Error:` line; now stderr holds one
    ``Warning:`` line per warning and the error."""
    import warnings

    import boneseg.inference.run as run_mod

    def noisy(*args, **kwargs):
        warnings.warn("a library notice\n  spread over lines", UserWarning, stacklevel=1)
        raise DataError("no images to predict")

    monkeypatch.setattr(run_mod, "find_images", noisy)
    code, _, err = cli(capsys, "predict", tmp_path, "-m", tmp_path / "m.pt", "-o", tmp_path / "s.csv")
    lines = err.splitlines()
    assert code == 1 and len(lines) == 2, err
    assert lines[0].startswith("Warning: a library notice spread over lines (UserWarning from test_resources.py:")
    assert lines[1] == "Error: no images to predict"


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
@pytest.mark.parametrize("command", ["train", "split", "synth"])
def test_a_seed_out_of_range_is_one_usage_line(command, seed, tmp_path, capsys):
    """numpy's `Seed must be between 0 and 2**32 - 1` leaked as `ValueError` from train and split."""
    args = {
        "train": ["train", tmp_path / "data", *TINY, "--out", tmp_path / "run"],
        "split": ["split", tmp_path / "data", "--folds", "2"],
        "synth": ["synth", tmp_path / "new", "--size", "128"],
    }[command]
    code, _, err = cli(capsys, *args, "--seed", seed)
    assert code == 2 and f"--seed {seed}: must be a whole number from 0 to 4294967295" in error_line(err), err


def test_an_architecture_too_big_for_the_size_is_refused_up_front(tmp_path, capsys):
    """PAN at 64² failed deep in torch (`RuntimeError: … Output size is too small`) after reading the data."""
    from boneseg.modelling.models import check_arch_side

    args = [a if a != "unet" else "pan" for a in TINY]
    code, _, err = cli(capsys, "train", tmp_path / "data", *args, "--out", tmp_path / "run")
    assert code == 2 and "--arch pan needs inputs of at least 128x128: --size 64 is too small" in error_line(err)
    check_arch_side("pan", 128)
    check_arch_side("unet", 32)


def test_a_scaled_view_too_small_for_the_architecture_is_one_line(tmp_path):
    """A PAN trained at 128² predicted with the 0.75 scale runs at 96²: refused naming the scale."""
    import torch

    from boneseg.inference import Policy, Predictor
    from boneseg.inference.predictor import LoadedModel
    from boneseg.runs.config import TrainConfig
    from boneseg.runs.run import Run

    config = TrainConfig.from_any({"arch": "pan", "encoder": "resnet18", "size": 128})
    run = Run.__new__(Run)
    predictor = Predictor([LoadedModel(torch.nn.Identity(), config, "pan.pt", run=run)], "cpu")
    predictor.plan([Policy.parse("none")])
    with pytest.raises(UsageError, match=r"--arch pan needs inputs of at least 128x128: the --scales 0.75 view 96"):
        predictor.plan([Policy.parse("scale", "0.75,1")])
