"""Atomic outputs (boneseg.io): links written through, streams written in place, files in the way named."""

from __future__ import annotations

import os

import pytest

from boneseg import io
from boneseg.errors import DataError, OutputBusyError, OutputExistsError, UsageError


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


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "sub.csv"
    ready, release = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            io.set_writer("boneseg predict data -o sub.csv")
            with io.hold(out):
                os.write(ready[1], b"1")
                os.read(release[0], 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready[0], 1) == b"1"
        busy = rf"sub.csv is being written by pid {pid} .*boneseg predict"
        with pytest.raises(OutputBusyError, match=busy), io.hold(out):
            pass
    finally:
        os.write(release[1], b"1")
        os.waitpid(pid, 0)
    with io.hold(out), io.hold(out):  # free again once its holder is gone; holding nests in one process
        assert (tmp_path / ".sub.csv.lock").is_file()
    assert list(tmp_path.iterdir()) == []


def test_the_next_writer_removes_a_dead_writers_leftovers(tmp_path):
    out = tmp_path / "probs"
    out.mkdir()
    (out / "a.npz").write_bytes(b"1")
    (tmp_path / ".probs.0a1b2c3d.partial").mkdir()  # a staging folder
    (tmp_path / ".probs.0a1b2c3d.partial" / "b.npz").write_bytes(b"2")
    (out / ".a.npz.x_7kq2m9.tmp").write_bytes(b"half")  # a temp file inside
    (tmp_path / ".other.0a1b2c3e.partial").mkdir()  # another output's: kept
    with io.hold(out):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.0a1b2c3e.partial", "probs"]
    assert [p.name for p in out.iterdir()] == ["a.npz"]


@pytest.mark.parametrize("point", ["", "mid"])
def test_a_unit_killed_while_swapping_is_rolled_back_by_the_next_writer(tmp_path, point):
    model, sidecar = tmp_path / "m.onnx", tmp_path / "m.onnx.json"
    model.write_bytes(b"old model")
    sidecar.write_text("old sidecar")
    pid = os.fork()
    if pid == 0:
        try:
            os.environ[io.KILL_AT] = f"{model}@{point}" if point else str(model)
            with io.hold(model, sidecar), io.publishing(force=True) as pub:
                pub.file(model).write_bytes(b"new model")
                pub.file(sidecar).write_text("new sidecar")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    with io.hold(model, sidecar):
        pass
    assert (model.read_bytes(), sidecar.read_text()) == (b"old model", "old sidecar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]
    with io.publishing(force=True) as pub:  # and a whole swap replaces both
        pub.file(model).write_bytes(b"new model")
        pub.file(sidecar).write_text("new sidecar")
    assert (model.read_bytes(), sidecar.read_text()) == (b"new model", "new sidecar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]


def test_an_output_inside_a_folder_output_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--out .*sub.csv: inside --save-probs"):
        io.check_apart(tmp_path / "p" / "sub.csv", tmp_path / "p", "--out", "--save-probs")
    io.check_apart(tmp_path / "sub.csv", tmp_path / "p", "--out", "--save-probs")


# -- what an interrupt leaves ---------------------------------------------------------------------


def test_an_interrupt_names_the_held_outputs_outermost_first(tmp_path, monkeypatch):
    from boneseg.errors import Interrupted
    from boneseg.io import hold, on_interrupt

    monkeypatch.chdir(tmp_path)
    with pytest.raises(Interrupted) as caught, hold("sub.csv", "-", None), hold("probs"), hold(tmp_path / "sub.csv"):
        raise KeyboardInterrupt
    assert caught.value.exit_code == 130
    assert str(caught.value) == "no output was written (sub.csv, probs unchanged); rerun the same command"
    with pytest.raises(Interrupted) as caught, on_interrupt():
        raise KeyboardInterrupt
    assert str(caught.value) == "no output was written; rerun the same command"
    assert not list(tmp_path.iterdir())  # nothing made, no lock left


def test_an_interrupted_run_says_what_it_keeps_unless_it_lies_inside_another_output(tmp_path, monkeypatch):
    """train's run folder keeps its previous last.pt (continue with --resume); inside an output of its own
    (the demo's folder) the caller's output is what the user sees, unchanged."""
    from boneseg.engine import train
    from boneseg.errors import Interrupted
    from boneseg.io import hold

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "resolve_config", interrupted)
    with pytest.raises(Interrupted) as caught:
        train.train({"out": str(tmp_path / "run")})
    assert str(caught.value) == train.LEFT_ON_INTERRUPT and "--resume" in str(caught.value)
    with pytest.raises(Interrupted) as caught, hold(tmp_path / "demo"):
        train.train({"out": str(tmp_path / "demo" / "run")})
    assert str(caught.value) == f"no output was written ({tmp_path / 'demo'} unchanged); rerun the same command"


def test_weight_mismatches_name_each_tensor_that_does_not_fit():
    """The one listing of what stops a state dict loading (`--init-from`, a SAM2 trunk): missing, left over,
    other shape; nothing when every tensor fits."""
    import torch

    from boneseg.io import weight_mismatches

    own = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert weight_mismatches(own, {"a": torch.ones(2, 3), "b": torch.ones(4)}) == []
    theirs = {"a": torch.zeros(3, 2), "c": torch.zeros(1)}
    assert weight_mismatches(own, theirs, "is not in a trunk") == [
        "b is missing",
        "c is not in a trunk",
        "a is (3, 2), not (2, 3)",
    ]
