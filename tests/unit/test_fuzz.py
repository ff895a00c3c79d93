"""Fuzzing the parsers: no input makes them fail with anything but the project's own error."""

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boneseg import CLASSES
from boneseg.data.masks import load_label, rasterize
from boneseg.errors import BonesegError
from boneseg.submission import read_submission, validate_submission

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

csv_cell = st.one_of(
    st.sampled_from(list(CLASSES) + ["a.png", "", "1 2", "3 1 1 1", "x", '"', "1,2"]), st.text(max_size=12)
)
csv_rows = st.lists(st.lists(csv_cell, min_size=0, max_size=4), max_size=12)


@FUZZ
@given(
    header=st.sampled_from(["image_name,class,rle", "image_name,class", "", "\ufeffimage_name,class,rle"]),
    rows=csv_rows,
    raw=st.binary(max_size=30),
)
def test_csv_parsers(tmp_path, header, rows, raw):
    path = tmp_path / "sub.csv"
    body = "\n".join(",".join(r) for r in rows)
    path.write_bytes(header.encode() + b"\n" + body.encode("utf-8", "surrogatepass") + raw)
    try:
        sub = read_submission(path)
        for image in sub.images:
            sub.masks(image, (4, 4))
    except BonesegError:
        pass
    problems = validate_submission(path, (4, 4))
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)


json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 70),
        st.floats(allow_nan=True),
        st.text(max_size=8),
        st.sampled_from(list(CLASSES)),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
annotation = st.fixed_dictionaries(
    {
        "label": st.one_of(st.sampled_from(list(CLASSES)), st.text(max_size=6)),
        "points": st.one_of(st.lists(st.lists(st.integers(-3, 70), min_size=2, max_size=2), max_size=6), json_value),
        "type": st.just("poly_seg"),
    }
)


@FUZZ
@given(
    doc=st.one_of(json_value, st.fixed_dictionaries({"annotations": st.lists(annotation, max_size=6)})),
    garbage=st.booleans(),
)
def test_label_parser(tmp_path, doc, garbage):
    path = tmp_path / "label.json"
    text = json.dumps(doc)
    path.write_text(text[: len(text) // 2] if garbage else text)
    try:
        label = load_label(path, (64, 64))
    except BonesegError:
        return
    masks = rasterize(label.polygons, (64, 64))
    assert masks.shape == (29, 64, 64) and masks.dtype == np.bool_
