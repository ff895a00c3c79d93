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
    assert (
        "by_image_name" in analysis.load_inputs.__code__.co_names
        or "by_image_name" in analysis.load_inputs.__code__.co_varnames
    )


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


# -- mask bounding boxes --------------------------------------------------------------------------


def test_mask_bbox_has_one_home():
    from boneseg import maskops, plots, postprocess, rle
    from boneseg.data import masks, wrist
    from boneseg.workflows import pseudo

    for module in (plots, postprocess, rle, masks, wrist, pseudo):
        assert module.bbox is maskops.bbox, module.__name__
    assert not hasattr(postprocess, "_bbox") and not hasattr(plots, "_box") and not hasattr(rle, "_row_extent")


@pytest.mark.parametrize("layout", ["contiguous", "strided", "uint8"])
def test_bbox_and_its_users_agree(layout):
    from boneseg.data.masks import pack_masks, unpack_masks
    from boneseg.data.wrist import CARPAL_IDX, box_from_masks, square_box
    from boneseg.maskops import bbox

    m = np.zeros((200, 90), bool)
    m[70, 5] = m[150, 40:60] = True  # rows 70..150 (below the first 64-row block), cols 5..59
    m = {"contiguous": m, "strided": np.asfortranarray(m), "uint8": m.astype(np.uint8) * 255}[layout]
    assert bbox(m) == (70, 151, 5, 60)
    assert bbox(np.zeros((4, 4), bool)) is None
    boxes, bits = pack_masks(np.stack([m != 0, np.zeros_like(m, bool)]))
    assert boxes.tolist() == [[70, 151, 5, 60], [0, 0, 0, 0]]
    assert np.array_equal(unpack_masks(boxes, bits, m.shape)[0], m != 0)
    probs = np.zeros((29, *m.shape), np.float32)
    probs[CARPAL_IDX[0]] = m != 0
    want = square_box(70, 151, 5, 60, m.shape)
    assert box_from_masks(probs) == want == box_from_masks(torch.from_numpy(probs))


# -- device and process group ---------------------------------------------------------------------


def test_device_and_process_group_have_one_home():
    from boneseg.engine import distributed, train
    from boneseg.inference import predictor, run

    assert predictor.resolve_device is distributed.resolve_device
    assert run.setup is distributed.setup and run.cleanup is distributed.cleanup
    assert train.D is distributed and not hasattr(run, "dist_context")


def test_device_names_are_checked_alike():
    from boneseg.engine.distributed import resolve_device
    from boneseg.errors import UsageError

    assert resolve_device(torch.device("cpu")) == resolve_device("CPU") == torch.device("cpu")
    for bad in ("mps", "gpu", "cuda:x"):
        with pytest.raises(UsageError, match=r"^--device .*expected auto, cpu or cuda\[:N\]"):
            resolve_device(bad)
    with pytest.raises(UsageError, match=r"^--device cuda:99: "):
        resolve_device("cuda:99")


def test_a_callers_process_group_is_left_alone(tmp_path, monkeypatch):
    """`setup` inside a group someone else made joins it and `cleanup` leaves it (predict and train alike)."""
    import torch.distributed as dist

    from boneseg.engine.distributed import cleanup, setup

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        info = setup("cpu")
        assert (info.rank, info.world_size, info.created) == (0, 1, False)
        cleanup(info)
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
