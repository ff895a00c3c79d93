"""`boneseg postprocess`: a CSV's masks cleaned by predict's rule, its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from util import cli, error_line

from boneseg import CLASSES
from boneseg.postprocess import close_mask, postprocess_per_class
from boneseg.submission import read_submission


def _decoded(csv, shapes):
    sub = read_submission(csv)
    return {n: sub.masks(n, shapes[n]) for n in sub.images}


def test_postprocess_equals_predicts_rule(labelled, tmp_path, capsys):
    shapes = {n: m.shape[1:] for n, m in labelled["truth"].items()}
    rules = {"classes": {"finger-1": {"keep_largest": True}, "finger-2": {"min_area": 30}}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "postprocess.json").write_text(json.dumps(rules))
    out = tmp_path / "clean.csv"
    code, stdout, err = cli(
        capsys, "postprocess", labelled["csv"], "-o", out, "--rules", tmp_path / "run", "--min-area", 5,
        "--images", labelled["images"], "--json",
    )  # fmt: skip
    assert code == 0, err
    per_class = [(c == 0, 30 if c == 1 else 5) for c in range(len(CLASSES))]
    got = _decoded(out, shapes)
    for name, truth in labelled["truth"].items():
        assert np.array_equal(got[name], postprocess_per_class(truth, per_class)), name
    assert not got["odd.png"][0, 40:42, 70:72].any() and got["odd.png"][0].sum() == 300
    report = json.loads(stdout)
    assert report["per_class"]["finger-1"]["pixels_removed"] >= 4 and report["pixels_added"] == 0
    assert report["rules"] == str(tmp_path / "run" / "postprocess.json")
    assert "wrote" in err and "mask(s) changed" in err


def test_postprocess_close_fills_holes_and_streams_to_stdout(labelled, tmp_path, capsys):
    code, stdout, err = cli(
        capsys, "postprocess", labelled["csv"], "-o", "-", "--close", 5, "--images", labelled["images"]
    )
    assert code == 0, err
    out = tmp_path / "c.csv"
    out.write_text(stdout)
    shapes = {n: m.shape[1:] for n, m in labelled["truth"].items()}
    got = _decoded(out, shapes)
    odd = labelled["truth"]["odd.png"]
    assert got["odd.png"][1, 18:21, 48:51].all()  # the hole closed
    for name, truth in labelled["truth"].items():
        expected = np.stack([close_mask(m, 5) for m in truth])
        assert np.array_equal(got[name], expected), name
    assert np.array_equal(got["odd.png"][2:], odd[2:])  # empty masks stay empty
    rows = [line.split(",")[0] for line in stdout.splitlines()[1:]]
    assert rows == sorted(rows) and len(rows) == len(CLASSES) * len(shapes)


@pytest.mark.parametrize(
    "args, code, message",
    [
        ([], 2, "nothing to do: give --rules, --min-area, --keep-largest or --close"),
        (["--min-area", "-1"], 2, "--min-area must be 0 or more"),
        (["--close", "-3"], 2, "--close must be 0"),
        (["--keep-largest", "--size", "99999999999"], 2, "--size must be within 1..32768 pixels"),
        (["--close", "100000"], 2, "kernel side in pixels up to 255"),  # would run for hours
        (["--rules", "{tmp}"], 1, "no postprocess.json in this folder"),
        (["--rules", "{tmp}/x.json"], 1, "x.json: file not found"),
        (["--keep-largest", "--size", "16"], 1, "past the image's 256 pixels"),
    ],
)
def test_postprocess_refuses(labelled, tmp_path, capsys, args, code, message):
    args = [a.format(tmp=tmp_path) for a in args]
    got, _, err = cli(capsys, "postprocess", labelled["csv"], "-o", tmp_path / "o.csv", *args)
    assert got == code and message in error_line(err)
    assert not (tmp_path / "o.csv").exists()


def test_postprocess_keeps_an_existing_output(labelled, tmp_path, capsys):
    out = tmp_path / "o.csv"
    out.write_text("keep")
    code, _, err = cli(capsys, "postprocess", labelled["csv"], "-o", out, "--keep-largest", "--size", 256)
    assert code == 1 and "already exists" in error_line(err) and out.read_text() == "keep"


@pytest.mark.parametrize("value", ["NaN", "-3", "2.5", '""', "[]", "false"])
def test_postprocess_rules_file_refuses_bad_min_area(labelled, tmp_path, capsys, value):
    rules = tmp_path / "postprocess.json"
    rules.write_text(f'{{"classes": {{"Radius": {{"keep_largest": false, "min_area": {value}}}}}}}')
    code, _, err = cli(capsys, "postprocess", labelled["csv"], "-o", tmp_path / "o.csv", "--rules", rules)
    line = error_line(err)
    assert code == 1 and f"{rules}: class 'Radius': min_area" in line and "whole number >= 0" in line


@pytest.mark.parametrize("value", ["0", '""', "[]", '"yes"'])
def test_postprocess_rules_file_refuses_bad_keep_largest(labelled, tmp_path, capsys, value):
    """A value that is not true/false is refused, falsy ones included (they used to read as false)."""
    rules = tmp_path / "postprocess.json"
    rules.write_text(f'{{"classes": {{"Radius": {{"keep_largest": {value}, "min_area": 3}}}}}}')
    code, _, err = cli(capsys, "postprocess", labelled["csv"], "-o", tmp_path / "o.csv", "--rules", rules)
    assert code == 1 and f"{rules}: class 'Radius': keep_largest" in error_line(err)


def test_postprocess_counts_pixels_not_run_layouts(tmp_path, capsys):
    """A writer that splits a mask's runs row by row (adjacent runs) has not changed when they are merged:
    the mask is reported unchanged and its row is copied as it was."""
    split = " ".join(f"{r * 16 + 3} 2 {r * 16 + 5} 2" for r in range(2, 6))  # a 4x4 square, two runs a row
    rows = [f"a.png,{c},{split if c == 'Radius' else ''}" for c in CLASSES]
    (tmp_path / "in.csv").write_text("image_name,class,rle\n" + "\n".join(rows) + "\n")
    code, stdout, err = cli(capsys, "postprocess", tmp_path / "in.csv", "-o", tmp_path / "o.csv", "--keep-largest",
                            "--size", "16", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["changed_masks"] == 0
    assert f"a.png,Radius,{split}\n" in (tmp_path / "o.csv").read_text()
