"""`train --config FILE`: the file under the command line, and its errors naming the file."""

from __future__ import annotations

import json

import pytest
from util import TRAIN_ARGS, cli, error_line


def test_config_file_under_command_line_options(capsys, data, tmp_path):
    """YAML keys (dashes, `1e-3` as YAML reads it, runtime keys) are defaults; only typed options override them,
    runtime ones are never part of the run."""
    (tmp_path / "c.yaml").write_text(
        "arch: unet++\nencoder: resnet18\nsize: 64\nepochs: 5\nlr: 1e-3\n"
        "batch-size: 3\nunify-hands: R\nworkers: 0\ndevice: cpu\npatience: 4\n"
    )
    code, out, err = cli(
        capsys,
        "train",
        data,
        "--config",
        tmp_path / "c.yaml",
        "--epochs",
        "2",
        "--print-config",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    cfg = json.loads(out)
    assert (cfg["arch"], cfg["epochs"], cfg["lr"], cfg["batch_size"], cfg["unify_side"], cfg["patience"]) == (
        "unetplusplus",
        2,
        1e-3,
        3,
        "R",
        4,
    )
    assert "workers" not in cfg and "device" not in cfg and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "text, code, culprit",
    [
        ("epoch: 3\n", 2, "did you mean 'epochs'"),
        ("epochs: ten\n", 2, "epochs is 'ten'"),
        ("force: true\n", 2, "'force'"),
        ("epochs: [1\n", 1, "malformed YAML"),
        ("- 1\n", 1, "not a mapping"),
    ],
)
def test_config_file_errors_name_the_file(capsys, data, tmp_path, text, code, culprit):
    (tmp_path / "c.yml").write_text(text)
    got, _, err = cli(capsys, "train", data, *TRAIN_ARGS, "--config", tmp_path / "c.yml", "--out", tmp_path / "r")
    line = error_line(err)
    assert got == code and str(tmp_path / "c.yml") in line and culprit in line, line
