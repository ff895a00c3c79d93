"""Loss terms on known inputs; every term is multilabel (overlapping classes stay independent)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from boneseg.errors import UsageError
from boneseg.modelling.losses import LOSSES, LossTerm, build_loss, parse_loss


def _overlapping_target():
    target = torch.zeros(2, 29, 16, 16)
    target[:, 0, 2:10, 2:10] = 1
    target[:, 1, 6:14, 6:14] = 1  # overlaps class 0 on 6:10 x 6:10
    target[:, 28, :, 8:] = 1
    return target


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_perfect_overlapping_prediction_is_near_zero(name):
    target = _overlapping_target()
    logits = (target * 2 - 1) * 20
    perfect = build_loss(name)(logits, target).item()
    wrong = build_loss(name)(-logits, target).item()
    assert perfect < 0.05 and wrong > 0.5 and perfect < wrong


def test_parse_and_weights():
    assert parse_loss("0.3*bce+0.7*dice") == [LossTerm(0.3, "bce"), LossTerm(0.7, "dice")]
    assert parse_loss("bce + DICE") == [LossTerm(1.0, "bce"), LossTerm(1.0, "dice")]
    torch.manual_seed(0)
    logits, target = torch.randn(2, 29, 16, 16), _overlapping_target()
    combo = build_loss("0.3*bce+0.7*dice")(logits, target)
    parts = 0.3 * build_loss("bce")(logits, target) + 0.7 * build_loss("dice")(logits, target)
    assert torch.allclose(combo, parts)
    assert torch.allclose(build_loss("bce")(logits, target), F.binary_cross_entropy_with_logits(logits, target))


def test_dice_is_per_class_soft_dice():
    target = _overlapping_target()
    logits = torch.zeros_like(target)  # p = 0.5 everywhere
    p = torch.sigmoid(logits)
    inter, total = (p * target).sum((0, 2, 3)), (p + target).sum((0, 2, 3))
    expected = (1 - (2 * inter + 1) / (total + 1)).mean()  # all 29 classes, smoothing 1
    assert build_loss("dice")(logits, target).item() == pytest.approx(expected.item(), abs=1e-4)


def test_absent_class_false_positives_count():
    target = torch.zeros(1, 29, 8, 8)
    quiet, noisy = torch.full_like(target, -20.0), torch.full_like(target, -20.0)
    noisy[:, 5] = 20.0  # predicts a class that is not there
    for name in ("dice", "jaccard", "tversky"):
        assert build_loss(name)(quiet, target).item() < 1e-3 < build_loss(name)(noisy, target).item()


def test_lovasz_is_per_class_average():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 29, 8, 8), _overlapping_target()[:, :, ::2, ::2].contiguous()
    from segmentation_models_pytorch.losses.lovasz import _lovasz_hinge

    per_class = [_lovasz_hinge(logits[:, c].reshape(1, -1), target[:, c].reshape(1, -1)) for c in range(29)]
    assert build_loss("lovasz")(logits, target).item() == pytest.approx(torch.stack(per_class).mean().item(), rel=1e-5)


def test_boundary_weights_errors_on_edges_more():
    target = _overlapping_target()
    logits = (target * 2 - 1) * 3.0
    edge_err, inner_err = logits.clone(), logits.clone()
    edge_err[:, 0, 2, 2:10] *= -1  # flip the top edge row of class 0
    inner_err[:, 0, 5, 2:10] *= -1  # flip an interior row of the same length
    boundary = build_loss("boundary")
    assert boundary(edge_err, target) > boundary(inner_err, target)
    assert torch.isclose(build_loss("bce")(edge_err, target), build_loss("bce")(inner_err, target))


def test_unknown_terms_suggest():
    with pytest.raises(UsageError, match="did you mean 'dice'"):
        parse_loss("bce+dcie")
    with pytest.raises(UsageError, match="cannot read term"):
        parse_loss("0.3**bce")


def test_weights_in_scientific_notation_are_read():
    assert parse_loss("1e-2*bce+2E-1 * dice") == [LossTerm(0.01, "bce"), LossTerm(0.2, "dice")]


@pytest.mark.parametrize("spec", ["0*bce+0*dice", "bce+0.0*dice", "1e999*bce"])
def test_a_weight_that_is_zero_or_not_finite_is_refused(spec):
    """A 0 weight trained on nothing of that term (all zero: a loss of 0 and no learning at all)."""
    with pytest.raises(UsageError, match="weight must be a positive finite number"):
        parse_loss(spec)


def test_focal_tversky_is_tversky_to_the_power_gamma():
    torch.manual_seed(2)
    logits, target = torch.randn(2, 29, 16, 16), _overlapping_target()
    p = torch.sigmoid(logits)
    tp, fp, fn = (p * target).sum((0, 2, 3)), (p * (1 - target)).sum((0, 2, 3)), ((1 - p) * target).sum((0, 2, 3))
    tversky = 1 - (tp + 1) / (tp + 0.3 * fp + 0.7 * fn + 1)
    expected = tversky.pow(0.75).mean().item()
    assert build_loss("focal_tversky")(logits, target).item() == pytest.approx(expected, rel=1e-5)
    custom = build_loss("focal_tversky(alpha=0.5,beta=0.5,gamma=2)")(logits, target)
    balanced = 1 - (tp + 1) / (tp + 0.5 * fp + 0.5 * fn + 1)
    assert custom.item() == pytest.approx(balanced.pow(2).mean().item(), rel=1e-5)
    assert build_loss("tversky(alpha=0.3)")(logits, target).item() == pytest.approx(tversky.mean().item(), rel=1e-5)


def test_a_term_restricted_to_a_class_group_sees_those_channels_only():
    """The seed team's loss: focal Tversky on the wrist (8 carpals + radius + ulna) only."""
    from boneseg.classes import CARPALS, CLASSES, WRIST

    torch.manual_seed(3)
    logits, target = torch.randn(2, 29, 16, 16), _overlapping_target()
    wrist = [CLASSES.index(c) for c in WRIST]
    assert len(wrist) == 10 and set(CARPALS) < set(WRIST)
    team = build_loss("0.4*bce+0.4*dice+0.2*focal_tversky@wrist")(logits, target)
    parts = (
        0.4 * build_loss("bce")(logits, target)
        + 0.4 * build_loss("dice")(logits, target)
        + 0.2 * build_loss("focal_tversky")(logits[:, wrist], target[:, wrist])
    )
    assert torch.allclose(team, parts)
    fingers_wrong = logits.clone()
    fingers_wrong[:, :19] = -fingers_wrong[:, :19]
    assert torch.equal(build_loss("dice@wrist")(fingers_wrong, target), build_loss("dice@wrist")(logits, target))
    assert parse_loss("dice@carpals,Radius,ulna") == parse_loss("dice@WRIST")  # the same classes, any spelling
    assert parse_loss("dice@Scaphoid,finger-1")[0].classes == ("finger-1", "Scaphoid")  # class order
    assert str(parse_loss("0.2*focal_tversky(gamma=0.5)@thumb")[0]) == (
        "0.2*focal_tversky(gamma=0.5)@finger-1,finger-2,finger-3"
    )
    # a wrist model's loss gets the carpal channels only: the restriction picks those among them
    carpals = [CLASSES.index(c) for c in CARPALS]
    on_carpals = build_loss("dice@wrist")(logits[:, carpals], target[:, carpals], channels=carpals)
    assert torch.allclose(on_carpals, build_loss("dice")(logits[:, carpals], target[:, carpals]))


@pytest.mark.parametrize(
    "spec,message",
    [
        ("dice@wirst", r"@wirst is neither a class nor a group; did you mean 'wrist'"),
        ("dice@", r"cannot read term"),
        ("dice@Scaphoid,,Lunate", r"empty class name"),
        ("bce(gamma=2)", r"bce takes no parameters"),
        ("focal_tversky(gama=2)", r"'gama=2'.*expected name=value with a name of alpha, beta, gamma; did you mean"),
        ("focal_tversky(gamma=0)", r"gamma=0 .*must be a finite number > 0"),
        ("tversky(alpha=nan)", r"alpha=nan .*must be a finite number >= 0"),
        ("tversky(alpha=0,beta=0)", r"alpha and beta .* are both 0"),
    ],
)
def test_bad_restrictions_and_parameters_are_refused_in_one_line(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_loss(spec)


def test_dtbce_weighs_far_mistakes_more():
    from boneseg.data.masks import distance_maps
    from boneseg.modelling.losses import LossTerm, build_loss, parse_loss

    assert parse_loss("bce+dice+0.5*dtbce")[-1] == LossTerm(0.5, "dtbce")
    target = torch.zeros(1, 1, 40, 40)
    target[..., 10:30, 10:30] = 1
    dist = torch.from_numpy(distance_maps(target[0].bool().numpy()))[None]
    loss = build_loss("dtbce")
    assert loss.needs_distance
    near, far = target.clone() * 20 - 10, target.clone() * 20 - 10
    near[..., 9, 20] = 10  # a wrong pixel next to the edge
    far[..., 39, 39] = 10  # a wrong pixel far from the bone
    assert loss(far, target, dist) > loss(near, target, dist)
    assert torch.equal(loss(near, target), loss(near, target, dist))  # computed from the target when not given
