"""A shell tool starts fast: help, version, completion and the CSV-only commands never import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from util import write_dataset

from boneseg import CLASSES
from boneseg.cli import app

HEAVY = ("torch", "timm", "segmentation_models_pytorch")

# Runs each command line (JSON list of argv lists) in this one fresh interpreter and prints, per line, the
# heavy modules loaded so far: the first line that shows one names the command that imported it.
PROBE = """
import contextlib, io, json, sys
from boneseg.cli import main
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            main(argv)
    except SystemExit as exc:
        code = exc.code
    print(json.dumps([argv, code, [m for m in json.loads(sys.argv[2]) if m in sys.modules]]))
"""


def run_probe(argvs: list[list[str]], cwd: Path, **env: str) -> list[tuple[list[str], int, list[str]]]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": src, **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return [tuple(json.loads(line)) for line in proc.stdout.splitlines()]


def test_help_version_and_completion_never_import_torch(tmp_path):
    names = sorted(typer.main.get_command(app).commands)
    argvs = [["--version"], ["--help"], *([name, "--help"] for name in names)]
    for argv, code, heavy in run_probe(argvs, tmp_path):
        assert code == 0 and heavy == [], (argv, code, heavy)
    completion = run_probe([[]], tmp_path, COMP_WORDS="boneseg train --enc", COMP_CWORD="2",
                           _BONESEG_COMPLETE="complete_bash")  # fmt: skip
    assert completion == [([], 0, [])]


def test_csv_commands_never_import_torch(tmp_path):
    data = write_dataset(tmp_path / "data", patients=2)
    images = sorted(p.name for p in (data / "train" / "DCM").rglob("*.png"))
    for name, rle in (("a.csv", "1 5"), ("b.csv", "3 5")):
        rows = "".join(f"{image},{c},{rle}\n" for image in images for c in CLASSES)
        (tmp_path / name).write_text("image_name,class,rle\n" + rows)
    argvs = [
        ["check", "a.csv"],
        ["check", "a.csv", "--images", "data/train/DCM", "--json"],
        ["ensemble", "a.csv", "b.csv", "--vote", "hard", "-o", "hard.csv"],
        ["analyze", "a.csv", "b.csv", "--gt", "data", "--size", "64", "-o", "analysis"],
        ["report", "a.csv", "b.csv", "--gt", "data", "-o", "report"],
        ["report", "a.csv", "--size", "64", "-o", "report-no-gt"],
        ["analyze", "a.csv", "b.csv", "--images", "data/train/DCM", "--json"],
        ["masks", "a.csv", "--images", "data/train/DCM", "-o", "masks"],
        ["postprocess", "a.csv", "--keep-largest", "--close", "3", "--size", "64", "-o", "clean.csv"],
        ["models"],
        ["models", "--json"],
    ]
    results = run_probe(argvs, tmp_path)
    assert [argv for argv, _, _ in results] == argvs
    for argv, code, heavy in results:
        assert code == 0 and heavy == [], (argv, code, heavy)
    assert (tmp_path / "hard.csv").is_file() and (tmp_path / "report" / "index.html").is_file()
    assert (tmp_path / "masks" / "masks.json").is_file() and (tmp_path / "clean.csv").is_file()


def test_opencv_runs_single_threaded_once_loaded():
    """boneseg no longer loads OpenCV itself, yet cv2 still runs without its (fork-unsafe) thread pool."""
    show = "import boneseg, sys; assert 'cv2' not in sys.modules; import cv2; print(cv2.getNumThreads())"
    before = "import cv2; cv2.setNumThreads(4); import boneseg; print(cv2.getNumThreads())"
    for code in (show, before):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.split() == ["1"], code


def test_the_light_names_are_the_registries_names():
    from importlib.metadata import version

    import segmentation_models_pytorch as smp

    from boneseg import names
    from boneseg.data import transforms
    from boneseg.inference import tta
    from boneseg.modelling import losses, models

    assert tuple(losses.LOSSES) == names.LOSS_NAMES
    assert models.ALIASES is names.ARCH_ALIASES and set(names.ARCH_ALIASES.values()) <= set(models.ARCHITECTURES)
    assert transforms.AUGMENTATIONS is names.AUGMENTATIONS and tta.TTA_NAMES is names.TTA_NAMES
    live = (tuple(smp.MODEL_ARCHITECTURES_MAPPING), tuple(smp.encoders.get_encoder_names()))
    if version("segmentation-models-pytorch") != names.SMP_VERSION:
        pytest.skip(f"names recorded for smp {names.SMP_VERSION}; smp_names() asks smp itself here")
    assert (names.SMP_ARCHITECTURES, names.SMP_ENCODERS) == live == names.smp_names()


# -- Ctrl-C before and after the work: simulated by raising KeyboardInterrupt where it would land ----------

INTERRUPT_IMPORT = """
import sys
MODULE = sys.argv[1]
class Interrupt:  # Ctrl-C while MODULE is being imported
    def find_spec(self, name, path=None, target=None):
        if name == MODULE:
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
sys.argv = ["boneseg", *sys.argv[2:]]
from boneseg.cli import main
main()
"""


def run_boneseg(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    "module, args, line",
    [
        ("rich.console", ["--version"], "Error: interrupted"),  # the command line itself loading
        ("boneseg.submission", ["check", "a.csv"], "Error: check interrupted; no output was written; rerun the same"
                                                   " command"),
    ],
)  # fmt: skip
def test_ctrl_c_while_loading_is_one_line(module, args, line, tmp_path):
    done = run_boneseg(INTERRUPT_IMPORT, module, *args, cwd=tmp_path)
    assert (done.returncode, done.stderr, done.stdout) == (130, line + "\n", ""), done.stderr


def test_late_ctrl_c_keeps_the_commands_exit_code(tmp_path, capsys, monkeypatch):
    """A Ctrl-C after the command finished (here: while stdout is flushed) does not turn it into a failure."""
    from util import cli

    (tmp_path / "a.csv").write_text("image_name,class,rle\n" + "".join(f"a.png,{c},1 5\n" for c in CLASSES))
    (tmp_path / "bad.csv").write_text("image_name,class,rle\n")

    flush = sys.stdout.flush
    pending = []

    def interrupted_flush():  # the first flush after the command ran meets a Ctrl-C
        if pending:
            pending.pop()
            raise KeyboardInterrupt
        flush()

    monkeypatch.setattr(sys.stdout, "flush", interrupted_flush)
    for name, expected in (("a.csv", 0), ("bad.csv", 1)):
        pending.append(True)
        try:
            code, _, err = cli(capsys, "check", tmp_path / name)
        except KeyboardInterrupt:
            pytest.fail("a Ctrl-C after the command finished escaped main()")
        assert not pending
        assert code == expected and "Warning: interrupted after check had finished" in err, err
        assert "Error:" not in err and "Traceback" not in err


def test_ctrl_c_during_the_exit_of_a_finished_command_is_ignored(tmp_path):
    """The `boneseg` program ignores Ctrl-C once its command has finished (here: one sent from an exit hook)."""
    (tmp_path / "a.csv").write_text("image_name,class,rle\n" + "".join(f"a.png,{c},1 5\n" for c in CLASSES))
    code = (
        "import atexit, os, signal, sys\n"
        "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
        "sys.argv = ['boneseg', 'check', 'a.csv']\n"
        "from boneseg.cli import main\n"
        "main()\n"
    )
    done = run_boneseg(code, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "valid: a.csv\n"), done.stderr
