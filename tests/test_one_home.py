"""One home per rule: every caller uses the same function, and the shared rule behaves the same for all."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from boneseg.cli import main
from boneseg.errors import DataError


def cli(capsys, *args) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


# -- unique image names ---------------------------------------------------------------------------

def test_unique_names_have_one_home():
    from boneseg.data import layout
    from boneseg.inference import run
    from boneseg.workflows import analysis, pseudo

    assert run.by_image_name is pseudo.by_image_name is layout.by_image_name
    assert not hasattr(run, "check_unique_names")
    assert "by_image_name" in analysis.load_inputs.__code__.co_names or \
        "by_image_name" in analysis.load_inputs.__code__.co_varnames


def test_duplicate_base_names_name_both_images(tmp_path, capsys):
    from boneseg.data.layout import by_image_name, find_images

    for patient in ("ID001", "ID002"):
        (tmp_path / "imgs" / patient).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "imgs" / patient / "x.png"), np.zeros((8, 8), np.uint8))
    samples = find_images(tmp_path / "imgs")
    with pytest.raises(DataError, match=r"^here: two images named x\.png \(ID001/x\.png, ID002/x\.png\)"):
        by_image_name(samples, "here")
    code, err = cli(capsys, "predict", tmp_path / "imgs", "-m", tmp_path / "no-run", "-o", tmp_path / "s.csv")
    assert code == 1 and "two images named x.png (ID001/x.png, ID002/x.png)" in err, err
    assert "Traceback" not in err


# -- hand side ------------------------------------------------------------------------------------

def test_hand_side_has_one_home():
    from boneseg.data import layout
    from boneseg.inference import predictor, wrist

    assert predictor.side_from_masks is wrist.side_from_masks is layout.side_from_masks
    assert not hasattr(predictor, "side_from_probs")
    assert wrist.side_from_masks is layout.side_from_masks


def test_training_target_and_prediction_read_the_side_alike():
    """A thumb blob with a long thin spur: by its pixels it lies left of the little finger (a right hand),
    although its occupied columns reach past it. Target and prediction must both say right."""
    from boneseg.classes import CLASS_INDEX
    from boneseg.data.layout import side_from_masks
    from boneseg.modelling.heads import side_target

    masks = np.zeros((29, 64, 128), bool)
    masks[CLASS_INDEX["finger-1"], :, 10:21] = True
    masks[CLASS_INDEX["finger-1"], 0, 10:100] = True
    masks[CLASS_INDEX["finger-16"], :, 40:51] = True
    assert side_target(masks) == 1.0
    assert side_from_masks(torch.from_numpy(masks).float() * 0.9) == "R"
    assert side_target(masks[:, :, ::-1]) == 0.0
