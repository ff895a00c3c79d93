"""Checkpoints: the saved format, round trip and refusals."""

from __future__ import annotations

import pytest
import torch

from boneseg.errors import CheckpointError
from boneseg.modelling.models import build_model
from boneseg.runs.checkpoint import FORMAT, load_checkpoint, load_model, save_checkpoint


def test_checkpoint_roundtrip_and_refusals(tmp_path):
    config = {"arch": "unet", "encoder": "resnet18", "in_channels": 1, "mean": [0.5], "std": [0.25]}
    model = build_model(config)
    run = tmp_path / "run"
    save_checkpoint(
        run / "best.pt",
        {"config": config, "model": model.state_dict(), "epoch": 1, "step": 3, "metrics": {"val_dice": 0.5}},
    )
    assert not [p for p in run.iterdir() if p.name != "best.pt"]
    loaded, cfg = load_model(run)
    assert cfg == config and not loaded.training
    x = torch.randn(1, 1, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")  # a whole pickled module: never unpickled
    with pytest.raises(CheckpointError, match="refused: it holds Python objects"):
        load_checkpoint(tmp_path / "pickled.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'config' and 'model'"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="without best.pt or last.pt"):
        load_checkpoint(tmp_path)
    later = {"config": config, "model": model.state_dict(), "format": FORMAT + 1}
    save_checkpoint(tmp_path / "later.pt", later)  # another layout under the same keys: never misread
    with pytest.raises(CheckpointError, match=f"checkpoint format {FORMAT + 1}, from a later boneseg"):
        load_checkpoint(tmp_path / "later.pt")
    save_checkpoint(tmp_path / "earlier.pt", dict(later, format=FORMAT))
    assert load_checkpoint(tmp_path / "earlier.pt")["format"] == FORMAT
