"""Terminal output: tables keep their titles on one line."""

from __future__ import annotations


def test_table_titles_stay_on_one_line():
    """A title longer than its table is not wrapped to the table's width (every command's tables)."""
    import io

    from rich.console import Console

    from boneseg.cli.output import table

    title = "Out-of-fold predictions: 96 images -> oof_a.csv"
    buffer = io.StringIO()
    Console(file=buffer, width=100).print(table(title, ["fold", "run"], [[2, "runs/a_f2"]]))
    assert buffer.getvalue().splitlines()[0].strip() == title
