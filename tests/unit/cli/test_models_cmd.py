"""`boneseg models`: it lists exactly what the options accept."""

from __future__ import annotations


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
