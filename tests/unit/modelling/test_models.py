"""Model factory, input normalisation and checkpoints, with tiny real smp models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from util import cli, write_dataset

from boneseg.data.transforms import normalize, to_input
from boneseg.errors import CheckpointError, UsageError
from boneseg.modelling.models import ALIASES, ARCHITECTURES, build_model, resolve_arch, resolve_encoder
from boneseg.runs.checkpoint import FORMAT, load_checkpoint, load_model, save_checkpoint
from boneseg.runs.config import TrainConfig

ENCODER = {"dpt": "tu-vit_tiny_patch16_224"}  # DPT needs a ViT encoder
SIZE = {"pan": 128}  # PAN's pyramid pooling needs >= 128 px


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_builds_and_steps(arch):
    torch.manual_seed(0)
    model = build_model({"arch": arch, "encoder": ENCODER.get(arch, "resnet18"), "encoder_weights": "none"})
    size = SIZE.get(arch, 64)
    x = torch.randn(2, 1, size, size)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    logits = model(x)
    assert logits.shape == (2, 29, size, size)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
    opt.step()


@pytest.mark.parametrize("norm,kind", [("group", torch.nn.GroupNorm), ("instance", torch.nn.InstanceNorm2d)])
def test_norm_replaces_every_decoder_batchnorm(norm, kind):
    """--norm group|instance: the decoder's BatchNorm layers are replaced (the encoder's stay); the model trains
    a step on a batch of one, where BatchNorm statistics would be those of one image."""
    model = build_model({"arch": "unetpp", "encoder": "resnet18", "encoder_weights": "none", "norm": norm})
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.decoder.modules())
    assert sum(isinstance(m, kind) for m in model.decoder.modules()) > 10
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules())
    model(torch.randn(1, 1, 64, 64)).mean().backward()
    norms = [m for m in model.decoder.modules() if isinstance(m, kind)]
    assert all(m.weight.grad is not None for m in norms)
    if kind is torch.nn.GroupNorm:
        assert {m.num_groups for m in norms} <= {32, 16, 8}  # 32 groups, or as many as the channels divide


def test_norm_that_cannot_apply_is_refused_in_one_line():
    base = {"encoder": "resnet18", "encoder_weights": "none"}
    with pytest.raises(UsageError, match=r"--norm group cannot apply to --arch fpn: its decoder has no BatchNorm"):
        build_model({**base, "arch": "fpn", "norm": "group"})
    with pytest.raises(UsageError, match=r"--norm instance cannot apply to --arch upernet: its pyramid pooling"):
        build_model({**base, "arch": "upernet", "norm": "instance"})
    with pytest.raises(UsageError, match=r"--norm 'grup': unknown normalisation; did you mean 'group'"):
        build_model({**base, "arch": "unet", "norm": "grup"})
    upernet = build_model({**base, "arch": "upernet", "norm": "gn"})
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in upernet.decoder.modules())


def test_aliases_resolve():
    for alias, canonical in ALIASES.items():
        assert resolve_arch(alias) == canonical and (canonical in ARCHITECTURES or canonical == "sam2unet")
    assert resolve_arch("UNETPP") == resolve_arch("UnetPlusPlus") == resolve_arch("unet++") == "unetplusplus"
    assert resolve_arch("dlv3p") == "deeplabv3plus" and resolve_arch("SegFormer") == "segformer"


def test_unknown_names_suggest_closest():
    with pytest.raises(UsageError, match=r"--arch 'unetp'.*did you mean 'unetpp'"):
        resolve_arch("unetp")
    with pytest.raises(UsageError, match=r"did you mean 'efficientnet-b4'"):
        resolve_encoder("efficientnet_b4")
    with pytest.raises(UsageError, match=r"did you mean 'tu-convnext_tiny'"):
        resolve_encoder("tu-convnxt_tiny")
    assert resolve_encoder("tu-convnext_tiny.fb_in22k") == "tu-convnext_tiny.fb_in22k"
    assert resolve_encoder("ResNet18") == "resnet18"


def test_model_kwargs_the_model_would_ignore_are_refused(tmp_path, capsys):
    """smp hands names its architecture does not take to the encoder, whose smp encoders drop them silently: a
    U-Net's decoder_channels on FPN built the default FPN while config.json said otherwise."""
    base = {"encoder": "resnet18", "encoder_weights": "none"}
    with pytest.raises(UsageError, match=r"'decoder_channels': not a setting of --arch fpn; did you mean 'decoder_"):
        build_model({**base, "arch": "fpn", "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]}})
    with pytest.raises(UsageError, match=r"'activation': set by boneseg itself"):
        build_model({**base, "arch": "unet", "model_kwargs": {"activation": "sigmoid"}})
    fpn = build_model({**base, "arch": "fpn", "model_kwargs": {"decoder_pyramid_channels": 64}})
    assert fpn.decoder.p5.out_channels == 64
    with pytest.raises(UsageError, match="unexpected keyword argument 'decoder_channels'"):  # timm refuses it
        build_model({**base, "arch": "fpn", "encoder": "tu-resnet10t", "model_kwargs": {"decoder_channels": [8]}})

    data = write_dataset(tmp_path / "data")
    config = tmp_path / "c.json"
    unet = {"arch": "unet", "encoder": "resnet18", "size": 64, "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]}}
    config.write_text(json.dumps(unet))
    args = ("--config", config, "--arch", "fpn", "--dry-run", "--encoder-weights", "none", "-o", tmp_path / "run")
    code, _, err = cli(capsys, "train", data, *args)
    assert code == 2 and err.count("Error:") == 1 and "not a setting of --arch fpn" in err, err
    assert not (tmp_path / "run").exists()


def test_timm_encoder_and_rgb_channels():
    model = build_model({"arch": "fpn", "encoder": "tu-resnet10t", "encoder_weights": "none", "in_channels": 3})
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 29, 64, 64)


def test_encoder_weights_from_local_file(tmp_path):
    src = build_model({"arch": "unet", "encoder": "resnet18", "in_channels": 3})
    path = tmp_path / "enc.pth"
    torch.save({"state_dict": src.encoder.state_dict()}, path)
    model = build_model({"arch": "unet", "encoder": "resnet18", "encoder_weights": str(path)})
    assert torch.allclose(model.encoder.conv1.weight, src.encoder.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.encoder.layer1[0].conv1.weight, src.encoder.layer1[0].conv1.weight)
    with pytest.raises(CheckpointError, match="file not found"):
        build_model({"arch": "unet", "encoder": "resnet18", "encoder_weights": str(tmp_path / "missing.pth")})


def test_to_input_normalisation():
    image = np.array([[0, 255], [128, 64]], np.uint8)
    x = to_input(image, TrainConfig(mean=[0.5], std=[0.25]))
    assert x.shape == (1, 2, 2) and x.dtype == torch.float32
    assert torch.allclose(x[0], (torch.tensor([[0, 255], [128, 64]]) / 255 - 0.5) / 0.25)
    rgb = to_input(image, TrainConfig(channels="rgb", mean=[0.4, 0.5, 0.6], std=[0.2, 0.2, 0.2]))
    assert rgb.shape == (3, 2, 2) and torch.allclose(rgb[2, 0, 0], torch.tensor(-3.0))
    batch = torch.from_numpy(np.stack([image, image]))
    assert torch.equal(normalize(batch, TrainConfig())[0], to_input(image, TrainConfig()))
    assert batch.dtype == torch.uint8 and batch[0, 0, 1] == 255  # input untouched
    with pytest.raises(UsageError, match="did you mean 'rgb'"):
        to_input(image, TrainConfig(channels="rbg"))


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


def test_the_refused_norms_are_those_that_fail(monkeypatch):
    """Each refusal of registry.NORM_REFUSED stands for a real failure: forced, that decoder cannot train on a
    batch of one (a pooling branch normalises 1x1 maps), or it has no BatchNorm to replace."""
    from boneseg.modelling import models
    from boneseg.modelling.registry import NORM_REFUSED

    monkeypatch.setattr(models, "NORM_REFUSED", {})
    for arch, refused in NORM_REFUSED.items():
        for norm in refused:
            model = build_model({"arch": arch, "encoder": "resnet18", "encoder_weights": "none", "norm": norm})
            if arch == "fpn":
                assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.decoder.modules())
                continue
            size = SIZE.get(arch, 64)
            with pytest.raises(ValueError, match="more than 1"):
                model.train()(torch.randn(1, 1, size, size))
