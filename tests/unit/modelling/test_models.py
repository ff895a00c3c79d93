"""Model factory with tiny real smp models: every architecture and the encoder families of the
write-ups (smallest variant, random weights, see docs/encoders.md) build and run."""

from __future__ import annotations

import json

import pytest
import torch
from util import cli, write_dataset

from boneseg.errors import CheckpointError, UsageError
from boneseg.modelling.models import ALIASES, ARCHITECTURES, build_model, resolve_arch, resolve_encoder

FAMILIES = [
    # (family, arch, encoder, input side, extra config)
    ("EfficientNet", "unet", "efficientnet-b0", 64, {}),
    ("ResNeXt", "unet", "tu-resnext26ts", 64, {}),
    ("HRNet", "unet", "tu-hrnet_w18_small", 64, {}),
    ("Swin", "upernet", "tu-swin_tiny_patch4_window7_224", 224, {"size": 224}),
    ("MiT/SegFormer", "segformer", "mit_b0", 64, {}),
    ("ConvNeXt", "unet", "tu-convnext_atto", 64, {}),
    ("Hiera", "upernet", "tu-hiera_tiny_224", 224, {}),
]


@pytest.mark.parametrize("family,arch,encoder,side,extra", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_builds_and_runs(family, arch, encoder, side, extra):
    if encoder.startswith("tu-"):
        timm = pytest.importorskip("timm")
        if not timm.is_model(encoder[3:]):
            pytest.skip(f"this timm has no {encoder[3:]}")
    model = build_model({"arch": arch, "encoder": encoder, "encoder_weights": "none", "in_channels": 1, **extra}).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 1, side, side))
    assert y.shape == (1, 29, side, side)
    assert torch.isfinite(y).all()


def test_swin_is_built_for_the_training_size_and_takes_other_sides():
    """The factory builds timm's Swin for the run's --size (off the 224 grid: 160 = 40 patches, not a multiple
    of the 7-window) and with dynamic sizes, so crops, whole-image validation and sliding windows of other
    multiples of 32 run too."""
    model = build_model(
        {"arch": "upernet", "encoder": "tu-swin_tiny_patch4_window7_224", "encoder_weights": "none", "size": 160}
    ).eval()
    assert model.encoder.model.patch_embed.img_size == (160, 160)
    with torch.no_grad():
        for side in (160, 96):
            assert model(torch.randn(1, 1, side, side)).shape == (1, 29, side, side)


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable hub"])
def test_missing_pretrained_weights_offline_is_one_line_at_once(how, tmp_path, monkeypatch, capsys):
    """Default `--encoder-weights imagenet` with an empty cache and no network: one `Error:` line before any
    data work (no hub retries), exit 1 (environment, not usage), the way out named, no run folder."""
    import huggingface_hub.constants as hub
    from util import cli, error_line, write_dataset

    data = write_dataset(tmp_path / "data", patients=2)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    else:  # the real path: the cache misses, the hub's name does not resolve (.invalid never does)
        monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub, "ENDPOINT", "https://hub.boneseg.invalid")
        for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(proxy, raising=False)
    args = ["train", data, "--arch", "unet", "--encoder", "resnet18", "--size", "64", "--epochs", "1"]
    code, _, err = cli(capsys, *args, "--device", "cpu", "--workers", "0", "-o", tmp_path / "run")
    line = error_line(err)
    assert code == 1 and err.strip() == line and "Retry" not in err, err
    assert line.startswith("Error: --encoder-weights imagenet: the pretrained weights of resnet18 are not in")
    assert "--encoder-weights none" in line and "--encoder-weights PATH" in line
    assert ("HF_HUB_OFFLINE is set" if how == "HF_HUB_OFFLINE" else "hub.boneseg.invalid cannot be reached") in line
    assert not (tmp_path / "run").exists()


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
