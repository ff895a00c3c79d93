"""Nothing lost, by design: every command that writes an output, found by walking the Typer app, run under
the faults a team meets — a failing check next to `--force`, a second writer, a full disk, SIGKILL in the
middle of publishing — keeps its previous output whole (or, after a kill, the next run cleans up and works).

A command added later fails `test_every_command_has_an_invocation` until it gets a row in `INVOCATIONS`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from util import TINY, tiny_config, write_dataset
from util import run_cli as cli

from boneseg.cli import main
from boneseg.cli.app import OUTPUT_PARAMS, app
from boneseg.io import KILL_AT, hold

COMMANDS = typer.main.get_command(app).commands


def one_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    return lines[0]


@dataclass
class Invocation:
    """How the matrix runs one command: `valid(base, out)` writes the outputs `out` (option name -> path,
    one per entry of `outputs`: ``"file"`` or ``"folder"``); `failing(base, out)` fails one of its checks
    (given ``--force``). `good` is how its existing output is made: by `valid`, or a placeholder folder
    (for a command too slow to run twice here)."""

    outputs: dict[str, str]
    valid: Callable[[Path, dict], list]
    failing: Callable[[Path, dict], list]
    good: str = "valid"
    extra: dict = field(default_factory=dict)


TRAIN = [*TINY, "--max-steps", "1"]


def train_args(data, out, base, *more):
    return ["train", data, *TRAIN, "--cache-dir", base / "cache", "--out", out, *more]


INVOCATIONS: dict[str, Invocation | None] = {
    "synth": Invocation(
        {"out": "folder"},
        lambda b, o: ["synth", o["out"], "--patients", 1, "--test-patients", 1, "--size", 128],
        lambda b, o: ["synth", o["out"], "--patients", 0, "--size", 128],
    ),
    "eda": Invocation(
        {"out": "folder"},
        lambda b, o: ["eda", b / "data", "--out", o["out"], "--samples", 0],
        lambda b, o: ["eda", b / "nowhere", "--out", o["out"]],
    ),
    "split": Invocation(
        {"out": "file"},
        lambda b, o: ["split", b / "data", "--folds", 2, "-o", o["out"]],
        lambda b, o: ["split", b / "data", "--folds", 5, "-o", o["out"]],  # 5 folds of 2 patients
    ),
    "train": Invocation(
        {"out": "folder"},
        lambda b, o: train_args(b / "data", o["out"], b),
        lambda b, o: train_args(b / "badlabel", o["out"], b),
    ),
    "predict": Invocation(
        {"out": "file", "save_probs": "folder"},
        lambda b, o: ["predict", b / "data", "-m", b / "f0.pt", "-o", o["out"], "--save-probs", o["save_probs"]],
        lambda b, o: (
            ["predict", b / "data", "-m", b / "f0.pt", "-o", o["out"], "--save-probs", o["save_probs"]]
            + ["--threshold", b / "missing.json"]
        ),
    ),
    "export": Invocation(
        {"out": "file"},
        lambda b, o: ["export", b / "f0.pt", "--format", "onnx", "-o", o["out"]],
        lambda b, o: ["export", b / "f0.pt", "--format", "onnx", "-o", o["out"], "--threshold", b / "missing.json"],
    ),
    "tta": Invocation(
        {"thresholds_out": "file"},
        lambda b, o: (
            ["tta", b / "data", "-m", b / "f0.pt", "--policies", "none", "--workers", 0]
            + ["--thresholds-out", o["thresholds_out"]]
        ),
        lambda b, o: (
            ["tta", b / "data", "-m", b / "f0.pt", "--policies", "none", "--workers", 0]
            + ["--thresholds-out", o["thresholds_out"], "--fold", 7]
        ),
    ),
    "ensemble": Invocation(
        {"output": "file", "per_class_out": "file"},
        lambda b, o: (
            ["ensemble", b / "sub.csv", b / "sub2.csv", "--vote", "hard", "-o", o["output"]]
            + ["--scores", b / "scores.json", "--scores", b / "scores.json", "--per-class-out", o["per_class_out"]]
        ),
        lambda b, o: (
            ["ensemble", b / "sub.csv", b / "oof.csv", "--vote", "hard", "-o", o["output"]]
            + ["--scores", b / "scores.json", "--scores", b / "scores.json", "--per-class-out", o["per_class_out"]]
        ),
    ),
    "select": Invocation(
        {"out": "file"},
        lambda b, o: (
            ["select", b / "oof.csv", b / "oof.csv", "--gt", b / "data", "--splits", b / "splits.json"]
            + ["--workers", 0, "-o", o["out"]]
        ),
        lambda b, o: (
            ["select", b / "oof.csv", b / "sub.csv", "--gt", b / "data", "--splits", b / "splits.json"]
            + ["--workers", 0, "-o", o["out"]]
        ),
    ),
    "pseudo": Invocation(
        {"out": "folder"},
        lambda b, o: ["pseudo", b / "sub.csv", b / "data", "-o", o["out"], "--workers", 0],
        lambda b, o: ["pseudo", b / "oof.csv", b / "data", "-o", o["out"], "--workers", 0],  # not test images
    ),
    "oof": Invocation(
        {"out": "file", "save_probs": "folder"},
        lambda b, o: (
            ["oof", b / "f0.pt", b / "f1.pt", "-o", o["out"], "--save-probs", o["save_probs"]] + ["--device", "cpu"]
        ),
        lambda b, o: (
            ["oof", b / "f0.pt", b / "f0.pt", "-o", o["out"], "--save-probs", o["save_probs"]] + ["--device", "cpu"]
        ),  # a fold twice
    ),
    "audit": Invocation(
        {"out": "folder"},
        lambda b, o: ["audit", b / "data", "--pred", b / "oof.csv", "--out", o["out"], "--crops", 1],
        lambda b, o: ["audit", b / "data", "--pred", b / "sub.csv", "--out", o["out"], "--crops", 1],
    ),
    "analyze": Invocation(
        {"out": "folder"},
        lambda b, o: ["analyze", b / "oof.csv", "--gt", b / "data", "--out", o["out"]],
        lambda b, o: ["analyze", b / "sub.csv", "--gt", b / "data", "--out", o["out"]],  # unlabelled images
    ),
    "report": Invocation(
        {"out": "folder"},
        lambda b, o: ["report", b / "oof.csv", "--gt", b / "data", "-o", o["out"]],
        lambda b, o: ["report", b / "sub.csv", "--gt", b / "data", "-o", o["out"]],
    ),
    "demo": Invocation(
        {"out": "folder"},
        lambda b, o: ["demo", "--quick", "--out", o["out"]],
        lambda b, o: ["demo", "--quick", "--out", o["out"], "--seed", -1],
        good="placeholder",
    ),
    "calibrate": Invocation(
        {"out": "file"},  # and its --plot beside it, published with it
        lambda b, o: ["calibrate", b / "oof_probs", "--gt", b / "data", "-o", o["out"], "--workers", 0],
        lambda b, o: ["calibrate", b / "oof_probs", "--gt", b / "nowhere", "-o", o["out"], "--workers", 0],
    ),
    "postprocess": Invocation(
        {"out": "file"},
        lambda b, o: ["postprocess", b / "sub.csv", "--out", o["out"], "--min-area", 5, "--images", b / "data"],
        lambda b, o: ["postprocess", b / "missing.csv", "--out", o["out"], "--min-area", 5, "--images", b / "data"],
    ),
    "masks": Invocation(
        {"out": "folder"},
        lambda b, o: ["masks", b / "sub.csv", "--out", o["out"], "--images", b / "data"],
        lambda b, o: ["masks", b / "missing.csv", "--out", o["out"], "--images", b / "data"],
    ),
    "distill": Invocation(
        {"out": "folder"},
        lambda b, o: (
            ["distill", b / "data", *TRAIN, "--teacher", b / "oof_probs", "--cache-dir", b / "cache"]
            + ["--out", o["out"]]
        ),
        lambda b, o: (
            ["distill", b / "data", *TRAIN, "--teacher", b / "missing", "--cache-dir", b / "cache"]
            + ["--out", o["out"]]
        ),
    ),
    "check": None,  # writes nothing
    "models": None,
}


def outputs_of(command) -> list[str]:
    return [p.name for p in command.params if p.name in OUTPUT_PARAMS]


def test_every_command_has_an_invocation():
    """Walks the app: a command with an output option needs a row naming each output it is run with; one
    without needs a None row (so a command added later cannot slip through)."""
    assert sorted(INVOCATIONS) == sorted(COMMANDS)
    for name, command in COMMANDS.items():
        row = INVOCATIONS[name]
        declared = [n for n in outputs_of(command) if n != "output_alias"]
        if row is None:
            assert declared == [], f"{name} writes {declared}: give it an invocation"
        else:
            assert declared and set(row.outputs) <= set(declared), (name, declared)


WRITERS = [name for name, row in INVOCATIONS.items() if row is not None]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A 64-px dataset (2 labelled patients, 1 test patient), a copy with a malformed label, two untrained
    fold checkpoints, their out-of-fold CSV and a test-set submission."""
    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("publish")
    write_dataset(root / "data", patients=2, size=64)
    bad = Path(shutil.copytree(root / "data", root / "badlabel"))
    label = sorted((bad / "train" / "outputs_json").rglob("*.json"))[0]
    label.write_text(label.read_text()[:-20])
    (root / "scores.json").write_text(json.dumps({"per_class_dice": {"Radius": 0.9}}))
    assert cli("split", root / "data", "--folds", 2, "-o", root / "splits.json")[0] == 0
    for k in range(2):
        cfg = tiny_config(root / "data", root / f"run{k}", fold=k, folds=2, splits=str(root / "splits.json"))
        state = {"config": cfg, "model": build_model(cfg).state_dict(), "epoch": 0, "step": 0, "metrics": {}}
        save_checkpoint(root / f"f{k}.pt", state)
    assert cli("predict", root / "data", "-m", root / "f0.pt", "-o", root / "sub.csv", "--workers", 0)[0] == 0
    shutil.copy(root / "sub.csv", root / "sub2.csv")
    oof = ["oof", root / "f0.pt", root / "f1.pt", "-o", root / "oof.csv", "--save-probs", root / "oof_probs"]
    assert cli(*oof, "--device", "cpu")[0] == 0
    return root


def make_outputs(row: Invocation, folder: Path) -> dict[str, Path]:
    return {name: folder / f"{name}{'.out' if kind == 'file' else ''}" for name, kind in row.outputs.items()}


@pytest.fixture(scope="module")
def goods(base, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Each command's good output, made once."""
    root = tmp_path_factory.mktemp("goods")
    made = {}
    for name in WRITERS:
        row = INVOCATIONS[name]
        assert row is not None
        out = make_outputs(row, root / name)
        if row.good == "placeholder":
            for path in out.values():
                path.mkdir(parents=True)
                (path / "keep.txt").write_text("a good output")
        else:
            code, err = cli(*row.valid(base, out))
            assert code == 0, (name, err)
        made[name] = out
    return made


def copy_good(goods, name: str, tmp: Path) -> dict[str, Path]:
    """A copy of the command's good outputs and whatever it wrote beside them (an export's sidecar)."""
    folder = next(iter(goods[name].values())).parent
    shutil.copytree(folder, tmp / "o", symlinks=True)
    return {key: tmp / "o" / src.name for key, src in goods[name].items()}


def snapshot(path: Path) -> dict[str, str]:
    """Every file under `path` (or `path` itself) with the SHA-256 of its bytes."""
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
    }


def leftovers(out: Path) -> list[str]:
    """Hidden work files beside `out` or inside it (temp files, staging folders, backups, journals, locks)."""
    beside = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    inside = [p.name for p in out.iterdir() if p.name.startswith(".")] if out.is_dir() else []
    return beside + inside


@contextlib.contextmanager
def held_elsewhere(path: Path):
    """`path` held by another process (a forked child) until the block ends; yields its pid."""
    ready, release = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the other writer
        try:
            with hold(path):
                os.write(ready[1], b"1")
                os.read(release[0], 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready[0], 1) == b"1"
        yield pid
    finally:
        os.write(release[1], b"1")
        os.waitpid(pid, 0)
        for fd in (*ready, *release):
            os.close(fd)


def killed_while_publishing(args: list, out: Path, point: str = "") -> bool:
    """Run the command in a forked child that SIGKILLs itself when it publishes `out` (`boneseg.io.KILL_AT`);
    True when it died so."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)  # its own group: the workers it forks are ended with it below
            os.environ[KILL_AT] = f"{out}@{point}" if point else str(out)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            main([str(a) for a in args])
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # orphaned workers of the killed writer
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("name", WRITERS)
def test_faults_keep_the_previous_output(name, base, goods, tmp_path):
    """(a) a failing check with --force: every output byte-identical, nothing left beside it; (b) a second
    writer: refused at once naming the holder, outputs untouched; (d) SIGKILL while publishing, then the
    same command again: it works and leaves no temp file."""
    row = INVOCATIONS[name]
    assert row is not None
    out = copy_good(goods, name, tmp_path)
    before = {k: snapshot(p) for k, p in out.items()}

    code, err = cli(*row.failing(base, out), "--force")
    one_error(err)
    assert code != 0
    assert {k: snapshot(p) for k, p in out.items()} == before, f"{name}: a failed --force changed its output"
    assert [x for p in out.values() for x in leftovers(p)] == []

    for key, path in out.items():
        with held_elsewhere(path) as pid:
            code, err = cli(*row.valid(base, out), "--force")
        line = one_error(err)
        assert code == 1 and f"pid {pid} " in line and "being written" in line, (key, line)
        assert {k: snapshot(p) for k, p in out.items()} == before
        assert [x for p in out.values() for x in leftovers(p)] == []

    first = next(iter(out.values()))
    assert killed_while_publishing([*row.valid(base, out), "--force"], first), f"{name}: never published {first}"
    code, err = cli(*row.valid(base, out), "--force")
    assert code == 0, err
    assert [x for p in out.values() for x in leftovers(p)] == [], name


# -- a full disk ----------------------------------------------------------------------------------------

FULL_DISK = textwrap.dedent(
    """
    import contextlib, hashlib, io, json, os, shutil, subprocess, sys
    from pathlib import Path
    from boneseg.cli import main

    def snapshot(path):
        if path.is_file():
            return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
        return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
                for p in sorted(path.rglob("*"))}

    results = {}
    for case in json.loads(sys.argv[1]):
        mount = Path(case["mount"])
        mount.mkdir(parents=True)
        files = [p for src in case["goods"] for p in [Path(src), *Path(src).rglob("*")] if p.is_file()]
        size = sum(-(-p.stat().st_size // 4096) * 4096 for p in files) + (4 << 20)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
        try:
            outs = [Path(p) for p in case["outs"]]
            for src, dst in zip(case["goods"], outs):
                (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dst)
            with open(mount / "filler", "wb") as fh:  # the disk is full
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\\0" * 65536)
                        fh.flush()
            before = [snapshot(p) for p in outs]
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(case["args"])
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
            intact = [snapshot(p) for p in outs] == before
            left = sorted(p.name for p in mount.iterdir() if p.name != "filler" and p not in outs)
            results[case["name"]] = {"code": code, "err": err.getvalue(), "intact": intact, "left": left}
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=True)
    print(json.dumps(results))
    """
)


def test_a_full_disk_keeps_the_previous_output(base, goods, tmp_path):
    """(c) Each command with --force onto its good output on a full disk (a small tmpfs, mounted in a user
    and mount namespace of its own): one Error line, exit non-zero, the previous output byte-identical."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a small tmpfs")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user/mount namespaces here: {probe.stderr.decode().strip()}")
    cases = []
    for name in WRITERS:
        row = INVOCATIONS[name]
        assert row is not None
        mount = tmp_path / name
        out = {k: mount / p.name for k, p in goods[name].items()}
        goods_folder = next(iter(goods[name].values())).parent
        args = [str(a) for a in [*row.valid(base, out), "--force"]]
        cases.append(
            {
                "name": name,
                "mount": str(mount),
                "goods": [str(p) for p in goods_folder.iterdir()],
                "outs": [str(mount / p.name) for p in goods_folder.iterdir()],
                "args": args,
            }
        )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", FULL_DISK, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {}
    for name, r in results.items():
        errors = [line for line in r["err"].splitlines() if line.startswith("Error:")]
        if r["code"] == 0 or len(errors) != 1 or "Traceback" in r["err"] or not r["intact"] or r["left"]:
            bad[name] = r
    assert bad == {}, json.dumps(bad, indent=1)[:6000]


# -- train: a failing check never costs a good run -------------------------------------------------------


TRAIN_FAULTS = {
    "bad-fold": lambda b, t: ["--fold", 5],
    "missing-splits": lambda b, t: ["--splits", t / "none.json", "--fold", 0],
    "missing-init-from": lambda b, t: ["--init-from", t / "none.pt"],
    "missing-exclude": lambda b, t: ["--exclude", t / "none.txt"],
    "arch-too-big-for-the-size": lambda b, t: ["--arch", "pan"],
}


@pytest.mark.parametrize("fault", [*TRAIN_FAULTS, "malformed-label"])
def test_train_force_with_a_failing_check_keeps_the_run(fault, base, goods, tmp_path):
    """`train … --out runs/good --force` with a typo: the good run stays byte-identical."""
    out = copy_good(goods, "train", tmp_path)["out"]
    before = snapshot(out)
    data = base / ("badlabel" if fault == "malformed-label" else "data")
    more = TRAIN_FAULTS[fault](base, tmp_path) if fault in TRAIN_FAULTS else []
    code, err = cli(*train_args(data, out, base, *more), "--force")
    one_error(err)
    assert code != 0
    assert snapshot(out) == before and leftovers(out) == []


def test_train_killed_before_its_first_checkpoint_gives_the_old_run_back(base, goods, tmp_path):
    """A --force run SIGKILLed before its first checkpoint: the next train on the folder puts the old run
    back first, so a plain rerun without --force is refused (the old run is there) and nothing was lost."""
    out = copy_good(goods, "train", tmp_path)["out"]
    before = snapshot(out)
    assert killed_while_publishing([*train_args(base / "data", out, base), "--force"], out)
    assert snapshot(out) != before  # the old run was set aside, not deleted
    code, err = cli(*train_args(base / "data", out, base))
    assert code == 1 and "not empty" in one_error(err)
    assert snapshot(out) == before and leftovers(out) == []


def test_two_trains_on_one_folder(base, tmp_path):
    """The second `train` on a folder another one is writing is refused at once, naming the first."""
    out = tmp_path / "run"
    with held_elsewhere(out) as pid:
        code, err = cli(*train_args(base / "data", out, base))
    assert code == 1 and f"pid {pid} " in one_error(err) and not out.exists()


# -- export: model and sidecar are one unit -------------------------------------------------------------


def test_export_killed_between_model_and_sidecar_leaves_a_matching_pair(base, goods, tmp_path):
    """SIGKILL after the new model is in place but before its sidecar: the next writer rolls the pair back."""
    out = copy_good(goods, "export", tmp_path)["out"]
    sidecar = out.with_name(out.name + ".json")
    before = (snapshot(out), snapshot(sidecar))
    args = [*INVOCATIONS["export"].valid(base, {"out": out}), "--force", "--threshold", 0.4]  # type: ignore[union-attr]
    assert killed_while_publishing(args, out, "mid")
    with hold(out, sidecar):  # the next export
        pass
    assert (snapshot(out), snapshot(sidecar)) == before and leftovers(out) == [] and leftovers(sidecar) == []


def test_predict_output_inside_its_probability_folder_is_refused_first(base, tmp_path):
    probs = tmp_path / "probs"
    code, err = cli("predict", base / "data", "-m", base / "f0.pt", "--save-probs", probs, "-o", probs / "sub.csv")
    assert code == 2 and "inside --save-probs" in one_error(err)
    assert list(tmp_path.iterdir()) == []
