"""`uncertainty.csv` as `pseudo --uncertainty` reads it: every image name round-trips, a table that is not
whole is refused rather than read as certain."""

from __future__ import annotations

import re

import pytest

from boneseg import CLASSES
from boneseg.errors import DataError
from boneseg.uncertainty import CSV, MAPS, write_table
from boneseg.workflows.pseudo import _doubtful


def _means(value: float) -> dict:
    return {m: [value] * len(CLASSES) if m == "entropy" else [None] * len(CLASSES) for m in MAPS}


def test_names_with_commas_quotes_and_unicode_round_trip(tmp_path):
    names = ["a, b.png", 'say "hi".png', "ünï é.png"]
    write_table(tmp_path, [(names[0], _means(0.9)), (names[1], _means(0.1)), (names[2], _means(0.2))])
    out = _doubtful(tmp_path, 0.5, names)
    assert set(out) == {names[0]} and out[names[0]][1] == list(CLASSES)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[:-1], "lacks 1 class row(s): Ulna"),  # truncated: Ulna was 0.9
        (lambda rows: [*rows, rows[-1]], "given twice"),
        (lambda rows: [r.replace("Ulna", "Ulnaa") for r in rows], "unknown class 'Ulnaa'"),
    ],
)
def test_an_incomplete_or_ambiguous_table_is_refused(tmp_path, edit, message):
    means = _means(0.1)
    means["entropy"][-1] = 0.9
    write_table(tmp_path, [("a.png", means)])
    header, *rows = (tmp_path / CSV).read_text().splitlines()
    (tmp_path / CSV).write_text("\n".join([header, *edit(rows)]) + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        _doubtful(tmp_path, 0.5, ["a.png"])
