"""The encoder families of the competition write-ups build through the model factory and run a forward.

Smallest variant of each family, random weights, at the smallest input each accepts (see docs/encoders.md).
"""

from __future__ import annotations

import pytest
import torch

from boneseg.modelling.models import build_model

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


def test_models_lists_exactly_what_the_options_accept(capsys):
    """Walk `boneseg models --json`: every name listed is accepted by the option it is listed for (as that name)."""
    import json

    from util import cli

    from boneseg.data.transforms import AUGMENTATIONS
    from boneseg.inference.tta import Policy
    from boneseg.modelling.losses import parse_loss
    from boneseg.modelling.models import check_norm, resolve_arch, resolve_encoder

    code, out, _ = cli(capsys, "models", "--json", "--timm", "convnext_a*")
    doc = json.loads(out)
    assert code == 0 and set(doc) == {
        *("architectures", "encoders", "encoder_weights", "norms", "losses", "loss_groups", "augmentations"),
        *("tta_policies", "tta_aliases", "tta_modes"),
    }
    for arch, aliases in doc["architectures"].items():
        assert {resolve_arch(a) for a in [arch, *aliases]} == {arch}
    assert "sam2unet" in doc["architectures"]
    for enc in [*doc["encoders"]["smp"], *doc["encoders"]["timm"]]:
        assert resolve_encoder(enc) == enc
    assert doc["encoders"]["timm"] and all(e.startswith("tu-convnext_a") for e in doc["encoders"]["timm"])
    assert [term.name for loss in doc["losses"] for term in parse_loss(loss)] == doc["losses"]
    for group in doc["loss_groups"]:
        assert parse_loss(f"dice@{group}")[0].classes == tuple(doc["loss_groups"][group])
    for trunk in doc["encoders"]["sam2unet"]:
        assert resolve_encoder(trunk, "sam2unet") == trunk
    for norm in doc["norms"]:
        assert check_norm("unet", norm) == norm
    assert doc["augmentations"] == list(AUGMENTATIONS)
    for mode in ["", *(m + ":" for m in doc["tta_modes"])]:
        for tta in doc["tta_policies"]:
            assert Policy.parse(mode + tta).tta == tta
        for alias, tta in doc["tta_aliases"].items():
            assert Policy.parse(mode + alias).tta == tta and tta in doc["tta_policies"]


def test_models_timm_pattern_matching_nothing_says_what_a_pattern_is(capsys):
    import re

    from util import cli

    code, _, err = cli(capsys, "models", "--timm", "convnext.*")
    assert code == 0 and "none match 'convnext.*': a shell pattern" in re.sub(r"[\s│]+", " ", err)


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
