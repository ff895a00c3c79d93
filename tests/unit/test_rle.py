import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boneseg import rle
from boneseg.errors import DataError


def notebook_encode(mask):
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (16, 16), (3, 40), (40, 3)])
def test_round_trip_random(shape):
    rng = np.random.default_rng(sum(shape))
    for p in (0.0, 0.1, 0.5, 0.9, 1.0):
        mask = rng.random(shape) < p
        text = rle.encode(mask)
        assert text == notebook_encode(mask.astype(np.uint8))
        assert np.array_equal(rle.decode(text, shape), mask)


def test_empty_full_and_corners():
    shape = (4, 6)
    assert rle.encode(np.zeros(shape, bool)) == ""
    assert rle.encode(np.ones(shape, bool)) == "1 24"
    m = np.zeros(shape, bool)
    m[0, 0] = m[-1, -1] = True
    assert rle.encode(m) == "1 1 24 1"
    # a run wrapping from the end of a row to the start of the next is one run
    m = np.zeros(shape, bool)
    m[0, 4:] = m[1, :2] = True
    assert rle.encode(m) == "5 4"
    assert np.array_equal(rle.decode("5 4", shape), m)


def test_non_bool_and_nan_empty():
    m = np.array([[0, 3], [255, 0]], np.uint8)
    assert rle.encode(m) == "2 2"
    for empty in ("", None, float("nan"), "   ", "nan", "NaN", " NAN "):  # pandas' missing value, as text too
        assert not rle.decode(empty, (3, 3)).any()


def test_decode_stack_and_into():
    masks = np.random.default_rng(1).random((3, 8, 9)) > 0.5
    texts = [rle.encode(m) for m in masks]
    assert np.array_equal(rle.decode_stack(texts, (8, 9)), masks)
    out = np.ones((8, 9), bool)
    assert np.array_equal(rle.decode_into(out, texts[0]), masks[0])
    with pytest.raises(ValueError, match="C-contiguous"):
        rle.decode_into(np.zeros((8, 18), bool)[:, ::2], texts[0])


def test_large_masks_are_ordinary_writeable_arrays():
    """Masks past 1 MiB live on their own memory mapping: they must behave like any numpy array."""
    import pickle

    mask = np.zeros((1100, 1000), bool)
    mask[3:900, 10:20] = mask[1099, 999] = mask[0, 0] = True
    mask[500:600, 995:] = True  # runs that wrap into the next row
    decoded = rle.decode(rle.encode(mask), mask.shape)
    assert decoded.dtype == np.bool_ and decoded.flags.writeable and decoded.shape == mask.shape
    assert np.array_equal(decoded, mask)
    decoded[0, 1] = True
    assert decoded[0, 1] and pickle.loads(pickle.dumps(decoded))[0, 1]
    stack = rle.decode_stack([rle.encode(mask), "", None, "1 1"], mask.shape)
    assert stack.shape == (4, *mask.shape) and np.array_equal(stack[0], mask)
    assert not stack[1:3].any() and stack[3].sum() == 1 and stack[3, 0, 0]


def test_decode_falls_back_to_numpy_when_no_mapping_is_left(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(rle.mmap, "mmap", refuse)
    mask = rle.decode("1 5 2000 3", (1100, 1000))
    assert mask.flags.writeable and mask.sum() == 8 and mask.reshape(-1)[1999:2002].all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_large_masks_are_private_to_a_process_after_fork():
    import multiprocessing

    mask = rle.decode("1 5", (1100, 1000))
    child = multiprocessing.get_context("fork").Process(target=mask.fill, args=(True,))
    child.start()
    child.join()
    assert child.exitcode == 0 and mask.sum() == 5  # the child's writes stayed in the child


def test_decode_stack_names_the_bad_rle_before_allocating():
    with pytest.raises(DataError, match=r"^class 'b': malformed RLE: odd"):
        rle.decode_stack(["1 2", "1 2 3"], (4, 4), labels=["class 'a'", "class 'b'"])


@pytest.mark.parametrize("text", ["1\t2\n5 1", " 1  2  5 1 ", "0001 2 5 0001"])
def test_any_whitespace_and_leading_zeros(text):
    assert rle.decode(text, (2, 3)).reshape(-1).tolist() == [True, True, False, False, True, False]


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("1 2 x 3", "'x' is not"),
        ("1.5 2", "not a non-negative"),
        ("-1 2", "not a non-negative"),
        ("1 0", "lengths must be >= 1"),
        ("0 2", "starts must be >= 1"),
        ("5 2 1 2", "out of order"),
        ("1 3 2 2", "overlaps"),
        ("1 2 3", "odd number"),
        ("10 8", "past the image"),
        ("99999999999999999999 1", "not a non-negative"),
        ("1 \u0662", "not a non-negative"),
        ("1 +2", "'[+]2'"),
        ("1 2\u00a05 1", r"character 4 is NO-BREAK SPACE \(U\+00A0\), not a space between numbers"),
        ("1\u20032", r"character 2 is EM SPACE"),
    ],
)
def test_malformed(text, fragment):
    with pytest.raises(DataError, match=fragment):
        rle.decode(text, (4, 4))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789 -x.\t\n", max_size=40))
def test_fuzz_parse_only_raises_project_errors(text):
    try:
        starts, ends = rle.parse(text, 64)
    except DataError:
        return
    assert (starts >= 0).all() and (ends <= 64).all() and (ends > starts).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32))
def test_fuzz_round_trip(h, w, seed):
    mask = np.random.default_rng(seed).random((h, w)) < 0.5
    assert np.array_equal(rle.decode(rle.encode(mask), (h, w)), mask)


@pytest.mark.parametrize("rows", [[0], [299], [0, 299], [63, 64], [5, 130, 131, 200], list(range(300))])
def test_row_extent_edge_cases(rows):
    mask = np.zeros((300, 70), bool)
    for r in rows:
        mask[r, (r * 7) % 70] = True
    assert rle.encode(mask) == notebook_encode(mask.astype(np.uint8))
    view = np.zeros((300, 140), bool)[:, ::2]  # a non-contiguous view
    view[...] = mask
    assert rle.encode(view) == rle.encode(mask)
