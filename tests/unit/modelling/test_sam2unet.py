"""SAM2-UNet as published: frozen Hiera trunk with adapters, RFB, U-Net decoder, deep supervision; SAM2's
release checkpoints mapped onto timm's trunk; its options checked in one line each."""

from __future__ import annotations

import pytest
import torch

from boneseg.errors import CheckpointError, UsageError
from boneseg.modelling.models import build_model, check_model_options, resolve_arch, resolve_encoder
from boneseg.modelling.sam2unet import RELEASE_PREFIX, SAM2UNet, trunk_state

TINY = {"arch": "sam2unet", "encoder": "sam2_hiera_tiny", "encoder_weights": "none"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY)


def test_names_resolve_and_wrong_ones_suggest():
    assert resolve_arch("SAM2-UNet") == resolve_arch("sam2") == "sam2unet"
    for name in ("sam2_hiera_tiny", "tu-sam2_hiera_tiny", "hiera_tiny", "tiny", "SAM2_Hiera_Tiny"):
        assert resolve_encoder(name, "sam2unet") == "sam2_hiera_tiny"
    with pytest.raises(UsageError, match=r"--arch sam2unet takes a SAM2 Hiera trunk; did you mean 'sam2_hiera_small'"):
        resolve_encoder("sam2_hiera_smal", "sam2unet")
    with pytest.raises(UsageError, match=r"takes a SAM2 Hiera trunk"):
        resolve_encoder("resnet34", "sam2unet")


def test_frozen_trunk_adapters_and_outputs(model):
    """The trunk is frozen, every block has an adapter that trains; training returns the final logits and the
    two deep-supervision outputs at the input size, evaluation the final logits only."""
    trunk = model.encoder.trunk
    assert len(model.encoder.adapters) == len(trunk.blocks) == 12
    assert not any(p.requires_grad for p in trunk.parameters())
    assert all(p.requires_grad for p in model.encoder.adapters.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert [len(rfb.branches) for rfb in model.decoder.rfb] == [4, 4, 4, 4]
    model.train()
    out = model(torch.randn(2, 1, 64, 64))
    assert set(out) == {"masks", "deep"} and out["masks"].shape == (2, 29, 64, 64)
    assert [d.shape for d in out["deep"]] == [(2, 29, 64, 64)] * 2
    (out["masks"].sum() + sum(d.sum() for d in out["deep"])).backward()
    assert all(p.grad is None for p in trunk.parameters())
    assert model.encoder.adapters[0].net[0].weight.grad is not None  # the gradient reaches the first adapter
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 96, 160)).shape == (1, 29, 96, 160)
        with pytest.raises(UsageError, match=r"input 80x80: SAM2-UNet needs sides that are multiples of 32"):
            model(torch.randn(1, 1, 80, 80))


def test_unfreeze_and_deep_supervision_off():
    net = SAM2UNet("sam2_hiera_tiny", adapter_dim=8, unfreeze=2, deep_supervision=(0.0, 0.0))
    blocks = list(net.encoder.trunk.blocks)
    assert all(p.requires_grad for b in blocks[-2:] for p in b.parameters())
    assert not any(p.requires_grad for b in blocks[:-2] for p in b.parameters())
    assert not any(p.requires_grad for p in net.encoder.trunk.patch_embed.parameters())
    assert net.encoder.adapters[0].net[0].out_features == 8
    assert not any(p.requires_grad for p in net.side_heads.parameters())  # unused: no DDP wait
    assert isinstance(net.train()(torch.randn(1, 1, 64, 64)), torch.Tensor)


def test_options_are_checked_in_one_line():
    assert check_model_options("sam2unet", "sam2_hiera_tiny") == ("batch", 32, 0, [1.0, 1.0])
    assert check_model_options("sam2unet", "sam2_hiera_tiny", "group", 16, 3, [0.5]) == ("group", 16, 3, [0.5, 0.5])
    with pytest.raises(UsageError, match=r"--unfreeze 13: must be a whole number in 0\.\.12"):
        check_model_options("sam2unet", "sam2_hiera_tiny", unfreeze=13)
    with pytest.raises(UsageError, match=r"--adapter-dim 0"):
        check_model_options("sam2unet", "sam2_hiera_tiny", adapter_dim=0)
    with pytest.raises(UsageError, match=r"--deep-supervision 1.0,2.0,3.0: expected 1 or 2 finite weights"):
        check_model_options("sam2unet", "sam2_hiera_tiny", deep_supervision=[1.0, 2.0, 3.0])
    with pytest.raises(UsageError, match=r"--deep-supervision -1"):
        check_model_options("sam2unet", "sam2_hiera_tiny", deep_supervision=[-1])
    with pytest.raises(UsageError, match=r"--adapter-dim: --arch unet has no frozen trunk with adapters"):
        check_model_options("unet", "resnet18", adapter_dim=32)
    with pytest.raises(UsageError, match=r"--deep-supervision: --arch unetplusplus has no auxiliary outputs"):
        check_model_options("unetplusplus", "resnet18", deep_supervision=[1.0])
    with pytest.raises(UsageError, match=r"model_kwargs 'decoder_channels': --arch sam2unet takes none"):
        build_model({**TINY, "model_kwargs": {"decoder_channels": [8]}})


def _release_file(tmp_path, trunk: dict, name: str = "sam2_hiera_tiny.pt"):
    """`trunk` (timm names) saved the way SAM2's release checkpoints hold it: under ``model``, prefixed
    ``image_encoder.trunk.``, MLP layers as ``mlp.layers.0/1``, beside the rest of SAM2."""
    sd = {
        RELEASE_PREFIX + k.replace("mlp.fc1.", "mlp.layers.0.").replace("mlp.fc2.", "mlp.layers.1."): v
        for k, v in trunk.items()
    }
    sd["image_encoder.neck.convs.0.conv.weight"] = torch.randn(256, 768, 1, 1)
    sd["sam_mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    sd["memory_encoder.pix_feat_proj.weight"] = torch.randn(256, 256, 1, 1)
    path = tmp_path / name
    torch.save({"model": sd}, path)
    return path


def test_sam2_release_checkpoint_maps_onto_the_trunk(tmp_path):
    """A SAM2-release-shaped state dict (made here from a random timm trunk) loads every trunk tensor through
    the name mapping; a 1-channel model gets the RGB patch kernel summed; timm-layout safetensors load too."""
    import timm

    torch.manual_seed(1)
    source = timm.create_model("sam2_hiera_tiny", pretrained=False, num_classes=0, in_chans=3)
    trunk = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    path = _release_file(tmp_path, trunk)
    assert set(trunk_state(torch.load(path, weights_only=True)["model"])) == set(trunk)

    rgb = build_model({**TINY, "encoder_weights": str(path), "in_channels": 3})
    mine = rgb.encoder.trunk.state_dict()
    assert set(mine) == set(trunk)
    assert all(torch.equal(mine[k], trunk[k]) for k in trunk)

    gray = build_model({**TINY, "encoder_weights": str(path), "in_channels": 1})
    kernel = gray.encoder.trunk.state_dict()["patch_embed.proj.weight"]
    assert torch.allclose(kernel, trunk["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert torch.equal(gray.encoder.trunk.state_dict()["blocks.11.mlp.fc2.weight"], trunk["blocks.11.mlp.fc2.weight"])

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trunk.items()}, str(tmp_path / "model.safetensors"))
    timm_layout = build_model({**TINY, "encoder_weights": str(tmp_path / "model.safetensors"), "in_channels": 3})
    assert torch.equal(timm_layout.encoder.trunk.state_dict()["pos_embed"], trunk["pos_embed"])


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path):
    import timm

    source = timm.create_model("sam2_hiera_tiny", pretrained=False, num_classes=0, in_chans=3)
    trunk = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    deeper = {k.replace("blocks.11.", "blocks.12."): v for k, v in trunk.items()}  # a trunk of another depth
    missing = r"not a sam2_hiera_tiny trunk: blocks\.11\.\S+ is missing \(and \d+ more\)"
    with pytest.raises(CheckpointError, match=missing):
        build_model({**TINY, "encoder_weights": str(_release_file(tmp_path, deeper, "deeper.pt"))})
    wider = dict(trunk, **{"blocks.0.attn.qkv.weight": torch.zeros(300, 96)})
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.weight is \(300, 96\), not \(288, 96\)"):
        build_model({**TINY, "encoder_weights": str(_release_file(tmp_path, wider, "wider.pt"))})
    torch.save({"model": {"encoder.conv1.weight": torch.zeros(1)}}, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match=r"no SAM2 trunk tensors in it"):
        build_model({**TINY, "encoder_weights": str(tmp_path / "resnet.pt")})


def test_deep_supervision_weights_enter_the_same_loss():
    """Each auxiliary output is scored by the run's own --loss (here the team's), weighted by --deep-supervision."""
    from boneseg.engine.data import build_criterion
    from boneseg.engine.train import _deep_loss
    from boneseg.runs.config import TrainConfig

    cfg = TrainConfig(loss="0.4*bce+0.4*dice+0.2*focal_tversky@wrist", deep_supervision=[0.5, 0.25])
    criterion = build_criterion(cfg)
    torch.manual_seed(4)
    target = (torch.rand(2, 29, 16, 16) > 0.7).float()
    side8, side16 = torch.randn(2, 29, 16, 16), torch.randn(2, 29, 16, 16)
    got = _deep_loss(criterion, {"masks": side8, "deep": [side8, side16]}, target, {}, cfg, torch.device("cpu"))
    assert torch.allclose(got, 0.5 * criterion(side8, target) + 0.25 * criterion(side16, target))
    assert float(_deep_loss(criterion, {"masks": side8}, target, {}, cfg, torch.device("cpu"))) == 0.0


def test_the_parameter_count_says_how_many_train(model):
    """train and --dry-run print the parameters that train beside the total: a frozen trunk is most of it."""
    from boneseg.engine.plan import parameter_count

    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert 0 < trained < total / 2
    assert parameter_count(model) == f"{total:,} parameters ({trained:,} trained, the rest frozen)"
    plain = build_model({"arch": "unet", "encoder": "resnet18", "encoder_weights": "none"})
    assert parameter_count(plain) == f"{sum(p.numel() for p in plain.parameters()):,} parameters"
