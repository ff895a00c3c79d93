"""Atomic outputs (boneseg.io): links written through, streams written in place, files in the way named."""

from __future__ import annotations

import os

import pytest

from boneseg import io
from boneseg.errors import DataError, OutputExistsError


def test_symlinked_output_is_written_through_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "sub.json", tmp_path / "sub.json"
    target.write_text("old")
    link.symlink_to(target)
    with pytest.raises(OutputExistsError):
        io.write_json(link, {"a": 1})
    io.write_json(link, {"a": 1}, force=True)
    assert link.is_symlink() and io.read_json(target) == {"a": 1}
    dangling = tmp_path / "new.json"
    dangling.symlink_to(tmp_path / "real" / "new.json")
    io.write_json(dangling, [])
    assert dangling.is_symlink() and io.read_json(tmp_path / "real" / "new.json") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "real", "sub.json"]


def test_stream_outputs_are_written_in_place_without_force(tmp_path):
    io.write_json(os.devnull, {"a": 1})  # not replaced by a file, no --force asked
    assert not os.path.isfile(os.devnull)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        io.write_json(fifo, [1])
        assert os.read(reader, 100) == b"[\n  1\n]\n"
    finally:
        os.close(reader)
    if os.path.exists("/dev/full"):
        with pytest.raises(DataError, match="cannot write /dev/full: No space left on device"):
            io.write_json("/dev/full", {})
        assert not os.path.isfile("/dev/full")


def test_a_file_in_the_way_of_an_output_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f" / "a.json", tmp_path / "f" / "sub" / "a.json"):
        with pytest.raises(DataError, match=f"cannot write {out}: a part of .* is a file, not a folder"):
            io.write_json(out, {})
        with pytest.raises(DataError, match="is a file, not a folder"):
            io.staging_folder(out)


def test_publishing_onto_a_file_needs_force_and_leaves_nothing(tmp_path):
    out = tmp_path / "probs"
    out.write_text("precious")
    staging = io.staging_folder(out)
    (staging / "a.npz").write_bytes(b"1")
    with pytest.raises(OutputExistsError, match="probs already exists and is not a folder"):
        io.publish_folder(staging, out)
    assert out.read_text() == "precious"
    io.publish_folder(staging, out, force=True)
    assert (out / "a.npz").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["probs"]


def test_publishing_onto_a_symlinked_folder_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "old.npz").write_bytes(b"0")
    link = tmp_path / "probs"
    link.symlink_to(tmp_path / "real")
    staging = io.staging_folder(link)
    (staging / "a.npz").write_bytes(b"1")
    io.publish_folder(staging, link, force=True)
    assert link.is_symlink() and sorted(os.listdir(tmp_path / "real")) == ["a.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probs", "real"]
