"""The CSV seams between commands: any RLE length, any image name, per-image bounds, pipes, docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from util import cli, error_line

from boneseg import CLASSES, rle
from boneseg.submission import SubmissionWriter, read_submission

DOCS = Path(__file__).resolve().parents[2] / "docs"


def write_csv(path: Path, rows: dict[str, list[str]]) -> Path:
    with SubmissionWriter(path) as w:
        for image, rles in rows.items():
            w.write_rles(image, rles)
    return path


def test_rle_of_any_length_is_read_by_check_analyze_and_ensemble(tmp_path, capsys):
    mask = np.zeros((2048, 2048), bool)
    mask[:40, ::2] = True  # 40 rows of single pixels: an RLE of ~300k characters
    text = rle.encode(mask)
    assert len(text) > 200_000
    sub = write_csv(tmp_path / "sub.csv", {"img.png": [text] + [""] * 28})

    code, out, err = cli(capsys, "check", sub)
    assert code == 0, err
    code, out, err = cli(capsys, "analyze", sub, "--json")
    assert code == 0, err
    assert json.loads(out)["models"][str(sub)]["mean_area"]["finger-1"] == mask.sum()
    vote = tmp_path / "vote.csv"
    code, out, err = cli(capsys, "ensemble", sub, sub, "--vote", "hard", "--workers", "1", "-o", vote)
    assert code == 0, err
    assert (read_submission(vote).masks("img.png", mask.shape)[0] == mask).all()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A freshly built tiny model saved as a boneseg checkpoint."""
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint

    config = {
        "arch": "unet",
        "encoder": "resnet18",
        "size": 64,
        "in_channels": 1,
        "channels": "gray",
        "unify_side": None,
    }
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(
        path, {"config": config, "model": build_model(config).state_dict(), "epoch": 0, "step": 0, "metrics": {}}
    )
    return path


def test_image_names_with_csv_special_characters_round_trip(tiny_checkpoint, tmp_path, capsys):
    names = ['a,b "c".png', "line\nbreak.png", "plain.png"]
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        assert cv2.imwrite(str(images / name), (rng.random((64, 64)) * 255).astype(np.uint8))
    sub = tmp_path / "sub.csv"
    code, _, err = cli(capsys, "predict", images, "-m", tiny_checkpoint, "-o", sub, "--device", "cpu", "--workers", "0")
    assert code == 0, err
    assert "\nplain.png,finger-1," in sub.read_text()  # ordinary names stay unquoted
    predicted = read_submission(sub)
    assert sorted(predicted.images) == sorted(names)

    code, _, err = cli(capsys, "check", sub, "--images", images)
    assert code == 0, err
    vote = tmp_path / "vote.csv"
    code, _, err = cli(capsys, "ensemble", sub, sub, "--vote", "hard", "--workers", "1", "--size", "64", "-o", vote)
    assert code == 0, err
    voted = read_submission(vote)
    assert voted.rles == predicted.rles
    code, out, err = cli(capsys, "analyze", sub, vote, "--size", "64", "--json")
    assert code == 0, err
    assert json.loads(out)["similarity"]["mean"][0][1] == 1.0


def test_check_bounds_each_image_by_its_own_size(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "small.png"), np.zeros((64, 64), np.uint8))
    cv2.imwrite(str(images / "tall.png"), np.zeros((128, 64), np.uint8))
    last = f"{128 * 64} 1"  # the last pixel of tall.png, past the end of small.png
    past = write_csv(tmp_path / "past.csv", {"small.png": [last] + [""] * 28, "tall.png": [last] + [""] * 28})
    code, out, err = cli(capsys, "check", past, "--images", images, "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert len(problems) == 1 and "small.png" in problems[0] and "past the image" in problems[0], problems

    inside = write_csv(
        tmp_path / "inside.csv", {"small.png": [f"{64 * 64} 1"] + [""] * 28, "tall.png": [last] + [""] * 28}
    )
    code, out, err = cli(capsys, "check", inside, "--images", images, "--size", "16")
    assert code == 0, out + err  # --size is the fallback only without an image folder


def test_check_refuses_an_image_folder_with_one_base_name_twice(tmp_path, capsys):
    """Rows are keyed by base name: two patients' a.png cannot both be covered (predict refuses them too)."""
    images = tmp_path / "images"
    for patient, size in (("ID001", 64), ("ID002", 32)):
        (images / patient).mkdir(parents=True)
        cv2.imwrite(str(images / patient / "a.png"), np.zeros((size, size), np.uint8))
    sub = write_csv(tmp_path / "sub.csv", {"a.png": [f"{64 * 64} 1"] + [""] * 28})
    code, _, err = cli(capsys, "check", sub, "--images", images)
    assert code == 1
    assert error_line(err) == (
        f"Error: {images}: two images named a.png (ID001/a.png, ID002/a.png); submission rows are keyed by base name"
    )


@pytest.mark.parametrize("source", ["-", "/dev/stdin"])
def test_check_reads_a_pipe(source, tmp_path):
    text = write_csv(tmp_path / "sub.csv", {"img.png": ["1 3"] + [""] * 28}).read_text()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    for body, expected in ((text, 0), (text.replace("1 3", "3 1 1 1"), 1)):
        res = subprocess.run(
            [sys.executable, "-m", "boneseg", "check", source],
            input=body,
            text=True,
            capture_output=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert res.returncode == expected, res.stdout + res.stderr
        assert "Traceback" not in res.stderr


def test_weighted_hard_vote_does_what_the_docs_say(tmp_path, capsys):
    doc = (DOCS / "ensemble.md").read_text()
    assert "--weights 2,1,1 -o vote.csv           # a and at least one of b, c (a has a veto)" in doc
    # pixel 1: a alone; 2: b and c; 3: a and b; 4: a and c
    inputs = [
        write_csv(tmp_path / f"{k}.csv", {"img.png": [r] + [""] * 28})
        for k, r in (("a", "1 1 3 2"), ("b", "2 2"), ("c", "2 1 4 1"))
    ]
    code, out, err = cli(capsys, "ensemble", *inputs, "--weights", "2,1,1", "--size", "1x4", "--workers", "1")
    assert code == 0, err
    assert out.splitlines()[1] == f"img.png,{CLASSES[0]},3 2"


def test_analyze_docs_repeat_scores_per_input():
    doc = (DOCS / "analyze.md").read_text()
    assert "--scores a.json --scores b.json" in doc and "--scores a.json b.json" not in doc


def test_sharded_predict_merge_keeps_quoted_rows_whole(tmp_path):
    from boneseg.inference.run import merge_parts

    names = ["line\nbreak.png", "b.png", "c,d.png"]  # rank 0 holds images 0 and 2, rank 1 image 1
    rles = {n: [f"{i + 1} 1"] + [""] * 28 for i, n in enumerate(names)}
    parts = [
        write_csv(tmp_path / "part-0.csv", {n: rles[n] for n in names[0::2]}),
        write_csv(tmp_path / "part-1.csv", {n: rles[n] for n in names[1::2]}),
    ]
    merge_parts(parts, len(names), tmp_path / "merged.csv", force=False)
    expected = write_csv(tmp_path / "expected.csv", rles)
    assert (tmp_path / "merged.csv").read_bytes() == expected.read_bytes()


def test_check_names_the_line_a_quoted_multiline_row_starts_on(tmp_path, capsys):
    sub = write_csv(tmp_path / "sub.csv", {"b.png": [""] * 29, "x\ny.png": ["5 1 1 1"] + [""] * 28})
    code, out, _ = cli(capsys, "check", sub, "--json")
    assert code == 1
    problem = f"row 31: 'x\\ny.png', '{CLASSES[0]}': malformed RLE: run 2 (start 1) is out of order or overlaps"
    assert json.loads(out)["problems"] == [problem + " the previous run"]
