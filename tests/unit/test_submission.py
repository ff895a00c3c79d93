import numpy as np
import pytest

from boneseg import CLASSES, rle
from boneseg.errors import DataError, OutputExistsError
from boneseg.submission import SubmissionWriter, read_submission, validate_submission


def _write(path, images, shape=(8, 8), seed=0, force=False):
    rng = np.random.default_rng(seed)
    masks = {}
    with SubmissionWriter(path, force=force) as w:
        for name in images:
            masks[name] = rng.random((29, *shape)) > 0.7
            w.write_masks(name, masks[name])
    return masks


def test_write_read_round_trip(tmp_path):
    path = tmp_path / "sub.csv"
    masks = _write(path, ["a.png", "b.png"])
    lines = path.read_text().splitlines()
    assert lines[0] == "image_name,class,rle" and len(lines) == 1 + 58
    assert [l.split(",")[1] for l in lines[1:30]] == list(CLASSES)
    sub = read_submission(path)
    assert sub.images == ["a.png", "b.png"]
    for name, m in masks.items():
        assert np.array_equal(sub.masks(name, (8, 8)), m)
    assert validate_submission(path, (8, 8), ["a.png", "b.png"]) == []


def test_row_order_independent_and_nan_empty(tmp_path):
    path = tmp_path / "sub.csv"
    masks = _write(path, ["a.png"])
    lines = path.read_text().splitlines()
    shuffled = [lines[0]] + lines[1:][::-1]
    shuffled[3] = shuffled[3].rsplit(",", 1)[0] + ","  # an empty field
    (tmp_path / "s2.csv").write_text("\n".join(shuffled) + "\n")
    sub = read_submission(tmp_path / "s2.csv")
    cls = shuffled[3].split(",")[1]
    got = sub.masks("a.png", (8, 8))
    assert not got[CLASSES.index(cls)].any()
    other = CLASSES.index("Ulna") if cls != "Ulna" else 0
    assert np.array_equal(got[other], masks["a.png"][other])
    for nan in ("NaN", "nan"):  # the contract: an empty or NaN field is an empty mask, for every reader
        shuffled[3] = shuffled[3].rsplit(",", 1)[0] + "," + nan
        (tmp_path / "s3.csv").write_text("\n".join(shuffled) + "\n")
        assert not read_submission(tmp_path / "s3.csv").masks("a.png", (8, 8))[CLASSES.index(cls)].any()
        assert validate_submission(tmp_path / "s3.csv", (8, 8)) == []


def test_no_overwrite_without_force_and_atomic(tmp_path):
    path = tmp_path / "sub.csv"
    _write(path, ["a.png"])
    before = path.read_text()
    with pytest.raises(OutputExistsError):
        _write(path, ["b.png"])
    with pytest.raises(RuntimeError), SubmissionWriter(path, force=True) as w:
        w.write_rles("c.png", [""] * 29)
        raise RuntimeError("interrupted")
    assert path.read_text() == before and not list(tmp_path.glob(".*tmp"))
    _write(path, ["b.png"], force=True)
    assert "b.png" in path.read_text()


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda l: ["image_name,cls,rle"] + l[1:], "wrong header"),
        (lambda l: l[:1] + l[2:], "lacks 1 class"),
        (lambda l: l + [l[1]], "duplicate row"),
        (lambda l: l[:1] + ["a.png,finger-30,"] + l[2:], "unknown class 'finger-30'"),
        (lambda l: l[:1] + ["a.png,finger-1"] + l[2:], "expected 3 fields"),
        (lambda l: ["image_name, class, rle"] + l[1:], "wrong header 'image_name, class, rle'"),
        (lambda l: [l[0]] + [",".join(["", *r.split(",")[1:]]) for r in l[1:]], "row 2: empty image_name"),
        (lambda l: [l[0]] + ["ID001/" + r for r in l[1:]], "row 2: image_name 'ID001/a.png' is a path"),
    ],
)
def test_read_errors(tmp_path, mutate, fragment):
    path = tmp_path / "sub.csv"
    _write(path, ["a.png"])
    (tmp_path / "bad.csv").write_text("\n".join(mutate(path.read_text().splitlines())) + "\n")
    with pytest.raises(DataError, match=fragment):
        read_submission(tmp_path / "bad.csv")


def test_header_and_names_a_scorer_refuses_are_problems_for_check_too(tmp_path):
    path = tmp_path / "sub.csv"
    _write(path, ["a.png"])
    lines = path.read_text().splitlines()
    assert validate_submission(path, (8, 8)) == []
    (tmp_path / "bom.csv").write_text("\ufeff" + "\r\n".join(lines) + "\r\n")
    assert validate_submission(tmp_path / "bom.csv", (8, 8)) == []
    (tmp_path / "blanks.csv").write_text("\n".join(["image_name,class ,rle", *lines[1:]]) + "\n")
    assert validate_submission(tmp_path / "blanks.csv", (8, 8)) == [
        "wrong header 'image_name,class ,rle' (expected image_name,class,rle)"
    ]
    (tmp_path / "path.csv").write_text("\n".join([lines[0], "ID001/" + lines[1], *lines[2:]]) + "\n")
    assert validate_submission(tmp_path / "path.csv", (8, 8))[0] == (
        "row 2: image_name 'ID001/a.png' is a path, not a file's base name"
    )


def test_validate_says_when_problems_go_unlisted(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text("image_name,class,rle\n" + "a.png,finger-1,\n" * 4)
    assert validate_submission(path, (8, 8), limit=2) == [
        "row 3: duplicate of row 2 ('a.png', 'finger-1')",
        "row 4: duplicate of row 2 ('a.png', 'finger-1')",
        "more problems not listed (the first 2 are)",
    ]
    every = validate_submission(path, (8, 8), limit=4)  # three duplicates, one image lacking 28 classes
    assert len(every) == 4 and every[-1].startswith("image a.png: missing class(es) finger-2")


def test_validate_lists_every_problem(tmp_path):
    path = tmp_path / "sub.csv"
    _write(path, ["a.png", "b.png"])
    lines = path.read_text().splitlines()
    lines[2] = "a.png,finger-2,5 3 1 1"  # unsorted
    lines[3] = "a.png,finger-3,60 10"  # past the 8x8 image
    lines[4] = "a.png,Nope,"  # unknown class
    lines.append(lines[40])  # duplicate
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    problems = validate_submission(bad, (8, 8), ["a.png", "c.png"])
    text = "\n".join(problems)
    for fragment in (
        "row 3:",
        "out of order",
        "row 4:",
        "past the image",
        "unknown class 'Nope'",
        "duplicate of row",
        "missing class(es) finger-4",
        "c.png: in the image folder",
        "b.png: in the submission but not",
    ):
        assert fragment in text, fragment
    assert rle.encode(np.zeros((2, 2))) == ""
