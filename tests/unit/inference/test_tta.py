"""TTA policies: their names, and predict's notes and summary for models that cannot run the TTA or inputs
asked: a side-unified model drops the flip (and the summary names the policy that ran), a FiLM model without
metadata says so."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
from util import tiny_config, write_dataset

from boneseg.cli import main
from boneseg.errors import UsageError
from boneseg.inference import Policy
from boneseg.probs import read_manifest


def test_policy_names():
    assert Policy.parse("none") == Policy()
    assert Policy.parse("sliding:hflip+scale", [1, 0.5]).views() == [
        (0.5, False),
        (0.5, True),
        (1.0, False),
        (1.0, True),
    ]
    assert Policy.parse("flip").name == "resize:hflip"
    with pytest.raises(UsageError, match="did you mean 'hflip'"):
        Policy.parse("hflp")
    with pytest.raises(UsageError, match="sliding"):
        Policy.parse("slidng:none")
    for bad in ("0", "1,-0.5", "nan", ","):  # the refusal quotes --scales as given
        with pytest.raises(UsageError, match=f"got '{bad}'"):
            Policy.parse("scale", bad)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A dataset and two tiny real checkpoints: side-unified (R) and FiLM."""
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("notes")
    write_dataset(root / "data", patients=1, size=64)
    for name, extra in {"unified": {"unify_side": "R"}, "film": {"meta": "film"}}.items():
        cfg = tiny_config(root / "data", root / name, **extra)
        save_checkpoint(
            root / f"{name}.pt",
            {"config": cfg, "model": build_model(cfg).state_dict(), "epoch": 1, "step": 1, "metrics": {}},
        )
    return root


def predict(*args) -> tuple[int, str]:
    """`boneseg predict ARGS` in-process: (exit code, stderr, where the notes and the summary go)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["predict", *map(str, args), "--workers", "0", "--device", "cpu"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, " ".join(err.getvalue().split())


@pytest.mark.parametrize("tta, used", [("hflip", "resize:none"), ("hflip+scale", "resize:scale")])
def test_unified_model_drops_the_flip_and_says_which_policy_ran(models, tmp_path, tta, used):
    code, err = predict(
        models / "data",
        "-m",
        models / "unified.pt",
        "--tta",
        tta,
        "-o",
        tmp_path / "o.csv",
        "--save-probs",
        tmp_path / "probs",
    )
    assert code == 0, err
    assert f"Warning: --tta {tta}: the flip is dropped for models trained with hand-side unification" in err
    assert f"running {used}" in err
    assert f"-> {tmp_path / 'o.csv'} ({used}," in err  # the summary line: the policy that ran
    assert read_manifest(tmp_path / "probs")["policy"] == used


def test_unified_model_without_flip_has_no_note(models, tmp_path):
    code, err = predict(models / "data", "-m", models / "unified.pt", "--tta", "scale", "-o", tmp_path / "o.csv")
    assert code == 0 and "Warning" not in err and "(resize:scale," in err, err


def test_film_model_without_metadata_warns(models, tmp_path):
    images = tmp_path / "images"  # a bare image folder: no meta_data.xlsx to find
    shutil.copytree(models / "data" / "test" / "DCM", images)
    code, err = predict(images, "-m", models / "film.pt", "-o", tmp_path / "o.csv")
    assert code == 0, err
    assert "Warning: a FiLM (--meta film) model runs without patient metadata" in err
    assert "give --meta FILE" in err and err.count("Warning:") == 1
