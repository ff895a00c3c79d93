"""The run format's config (`boneseg.runs.config`, `boneseg.runs.config_file`): old saved forms still load, and
a command line's options merge over a config file as `boneseg train` merges them."""

from __future__ import annotations

import json

import pytest
import torch

from boneseg.errors import UsageError


def test_old_saved_configs_still_load(tmp_path):
    """A checkpoint of an older version (the alias ``unify_hands``, no ``format``, runtime keys, keys this
    version does not know) opens as a typed run, and a config file with the alias reads as the field."""
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import load_checkpoint, save_checkpoint
    from boneseg.runs.config import TrainConfig
    from boneseg.runs.config_file import command_config, read_config
    from boneseg.runs.run import Run

    saved = {"arch": "unet", "encoder": "resnet18", "model_kwargs": {"decoder_channels": [16, 8, 8, 8, 8]}}
    saved.update(in_channels=1, classes=29, unify_hands="L", device="cuda", an_old_key=3, size=64)
    save_checkpoint(tmp_path / "run" / "best.pt", {"config": saved, "model": build_model(saved).state_dict()})
    opened = Run.open(tmp_path / "run")
    assert opened.config.unify_side == "L" and opened.config.device == TrainConfig().device and opened.size == 64
    assert isinstance(opened.model(), torch.nn.Module)
    assert load_checkpoint(tmp_path / "run")["config"]["unify_hands"] == "L"
    (tmp_path / "c.yaml").write_text("unify-hands: R\nepochs: 2\n")
    assert read_config(tmp_path / "c.yaml") == {"unify_side": "R", "epochs": 2}
    merged = command_config({"unify_hands": "none", "epochs": None}, tmp_path / "c.yaml", resume=True)
    assert merged == {"unify_side": None, "epochs": 2, "resume": True, "force": False}
    assert TrainConfig.from_any({"data": "d", "out": "o", "unify_hands": "R"}).unify_side == "R"


def test_options_given_override_the_file_and_none_is_not_given(tmp_path):
    from boneseg.runs.config_file import command_config

    (tmp_path / "c.json").write_text(json.dumps({"epochs": 3, "pseudo": ["p1"], "unify_side": "R", "wrist": True}))
    model = {"arch": "unet", "encoder": "resnet18", "size": 64}
    given = {"data": tmp_path / "d", "out": tmp_path / "o", "epochs": 5, "pseudo": [], "wrist": None, **model}
    merged = command_config(given, tmp_path / "c.json")
    assert merged == {
        **model,
        "epochs": 5,
        "pseudo": ["p1"],  # an empty list is "not given": the file's stays
        "unify_side": "R",
        "wrist": True,
        "data": str(tmp_path / "d"),
        "out": str(tmp_path / "o"),
        "resume": False,
        "force": False,
    }
    assert command_config({"pseudo": [tmp_path / "a"]}, resume=True)["pseudo"] == [str(tmp_path / "a")]
    with pytest.raises(UsageError, match="unknown training option 'epoch'; did you mean 'epochs'"):
        command_config({"epoch": 2})
    with pytest.raises(UsageError, match="unknown training option 'resume'"):
        command_config({"resume": True})


def test_a_new_run_names_its_model(tmp_path, capsys):
    """A command's new run must give ``--arch/--encoder/--size`` (options or config file); a resume need not."""
    from boneseg.cli import main
    from boneseg.runs.config_file import command_config

    with pytest.raises(UsageError, match=r"missing option --arch, --size \(needed for a new run\)"):
        command_config({"encoder": "resnet18"})
    config_file = tmp_path / "model.yaml"
    config_file.write_text("arch: unet\nencoder: resnet18\n")
    assert command_config({"size": 64}, config_file)["size"] == 64
    assert command_config({}, resume=True)["resume"] is True
    with pytest.raises(SystemExit) as done:
        main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--encoder", "resnet18"])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip() == "Error: missing option --arch, --size (needed for a new run)"
    assert not (tmp_path / "run").exists()
