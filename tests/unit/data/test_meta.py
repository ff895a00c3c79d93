"""Patient metadata: the file found as .xlsx or .csv, the table, the FiLM vector and the side target."""

from __future__ import annotations

import numpy as np
import pytest

from boneseg.classes import NUM_CLASSES
from boneseg.data import layout
from boneseg.modelling.heads import META_DIM, meta_table, meta_vector, side_target


def test_metadata_as_csv_is_found_like_the_xlsx(tmp_path):
    from boneseg.data.meta import find_meta_file, meta_table

    (tmp_path / "meta_data.csv").write_text("ID,나이,성별,체중(몸무게),키(신장)\n1,30,남,70,175\n", encoding="utf-8")
    assert layout.read_meta(tmp_path).loc["ID001", "age"] == 30
    assert find_meta_file(tmp_path / "test" / "DCM") == tmp_path / "meta_data.csv"
    assert meta_table(tmp_path)["ID001"][4:].all()  # every field present


def test_meta_vector_standardises_and_flags_missing_fields():
    v = meta_vector({"age": 55, "sex": "F", "height": float("nan"), "weight": None})
    assert v.shape == (META_DIM,)
    assert v[0] == pytest.approx(1.0) and v[1] == -1.0 and v[2] == 0 and v[3] == 0
    assert v[4:].tolist() == [1, 1, 0, 0]
    assert not meta_vector(None).any()


def test_meta_table_reads_the_dataset_file(synth_data, tmp_path):
    table = meta_table(synth_data)
    assert {"ID001", "ID002"} <= set(table) and all(v[4:].all() for v in table.values())
    below = meta_table(synth_data / "test" / "DCM")  # found from below, as predict does
    assert below.keys() == table.keys() and all(np.array_equal(below[k], table[k]) for k in table)
    assert meta_table(tmp_path) == {}


def test_side_target_from_masks():
    masks = np.zeros((NUM_CLASSES, 8, 8), bool)
    masks[0, :, 1] = True  # thumb left
    masks[15, :, 6] = True  # little finger right
    assert side_target(masks) == 1.0
    assert side_target(masks[:, :, ::-1]) == 0.0
    assert np.isnan(side_target(np.zeros_like(masks)))
