"""One home per rule: every caller uses the same function, and the shared rule behaves the same for all."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

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
