"""`boneseg predict`: CSV contract, every mode/TTA, ensembles, saved probabilities, thresholds, sharding."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from util import cli, error_line, make_checkpoint

from boneseg import CLASSES, probs, rle
from boneseg.cli import app
from boneseg.data.layout import find_images
from boneseg.errors import DataError, OutputExistsError, UsageError
from boneseg.inference import (
    PredictOptions,
    predict,
)
from boneseg.submission import SubmissionWriter, read_submission, validate_submission

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_csv_format_order_names_and_original_size(synth_data, ckpt, tmp_path):
    out = tmp_path / "sub.csv"
    run("predict", synth_data, "-m", ckpt, "-o", out, "--workers", "1")
    samples = find_images(synth_data)
    names = [s.image_name for s in samples]
    assert validate_submission(out, (256, 256), names) == []
    lines = out.read_text().splitlines()
    assert lines[0] == "image_name,class,rle"
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == [n for n in names for _ in CLASSES]
    assert [r[1] for r in rows] == list(CLASSES) * len(names)
    sub = read_submission(out)
    masks = sub.masks(names[0], (256, 256))
    assert masks.shape == (29, 256, 256) and masks.any()
    with pytest.raises(DataError):  # runs reach past a smaller image: the RLE is at 256²
        rle.parse(max((r[2] for r in rows), key=len), 128 * 128)


def test_stdout_and_python_api_agree(synth_data, ckpt, tmp_path):
    out = tmp_path / "sub.csv"
    predict(synth_data, [ckpt], out, options=PredictOptions(workers=0))
    result = run("predict", synth_data, "-m", ckpt, "--workers", "0")
    assert result.stdout == out.read_text()


@pytest.mark.parametrize("sliding", [False, True])
@pytest.mark.parametrize("tta", ["none", "hflip", "scale", "hflip+scale"])
def test_every_mode_and_tta_runs(one_image, ckpt, tmp_path, sliding, tta):
    out = tmp_path / "sub.csv"
    args = ["predict", one_image, "-m", ckpt, "-o", out, "--tta", tta, "--scales", "0.5,1", "--workers", "0"]
    if sliding:
        args += ["--sliding", "--window", "128", "--overlap", "0", "--batch-size", "3"]
    run(*args)
    names = [p.name for p in one_image.iterdir()]
    assert validate_submission(out, (256, 256), names) == []


def test_two_identical_models_equal_one(synth_data, ckpt, tmp_path):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    predict(synth_data, [ckpt], one, tta="hflip", options=PredictOptions(workers=0))
    predict(synth_data, [ckpt, ckpt], two, tta="hflip", options=PredictOptions(workers=0))
    assert one.read_bytes() == two.read_bytes()


def test_ensemble_weights_matter_and_are_checked(one_image, ckpt, tmp_path):
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    predict(one_image, [ckpt, other], a, options=PredictOptions(weights=[1, 0], workers=0))
    predict(one_image, [ckpt], b, options=PredictOptions(workers=0))
    assert a.read_bytes() == b.read_bytes()  # weight 0: the second model does not count
    with pytest.raises(UsageError, match="--weights"):
        predict(one_image, [ckpt, other], tmp_path / "c.csv", options=PredictOptions(weights=[1], workers=0))


def _csv_from_probs(folder: Path, out: Path, threshold) -> None:
    manifest = probs.read_manifest(folder)
    with SubmissionWriter(out) as w:
        for name in manifest["images"]:
            w.write_masks(name, probs.binarize(probs.load(folder, name), threshold))


@pytest.mark.parametrize("per_class", [False, True])
def test_saved_probs_give_back_the_same_csv(synth_data, ckpt, tmp_path, per_class):
    threshold = {c: 0.3 + 0.4 * i / 28 for i, c in enumerate(CLASSES)} if per_class else 0.5
    arg = threshold
    if per_class:
        arg = tmp_path / "thr.json"
        arg.write_text(__import__("json").dumps(threshold))
    out, pdir = tmp_path / "sub.csv", tmp_path / "probs"
    predict(synth_data, [ckpt], out, tta="hflip", threshold=arg, save_probs=pdir, options=PredictOptions(workers=0))
    manifest = probs.read_manifest(pdir)
    assert manifest["images"] == [s.image_name for s in find_images(synth_data)]
    q = probs.load(pdir, manifest["images"][0])
    assert q.dtype == np.uint8 and q.shape == (29, 256, 256)
    _csv_from_probs(pdir, tmp_path / "back.csv", threshold)
    assert (tmp_path / "back.csv").read_bytes() == out.read_bytes()
    from boneseg.workflows.ensemble import soft_vote  # the ensemble command's soft vote agrees too

    soft_vote([pdir], tmp_path / "soft.csv", threshold=threshold, workers=0)
    assert (tmp_path / "soft.csv").read_bytes() == out.read_bytes()


def test_thresholds_file_is_honoured(one_image, ckpt, tmp_path):
    base, tuned = tmp_path / "base.csv", tmp_path / "tuned.csv"
    run("predict", one_image, "-m", ckpt, "-o", base, "--workers", "0")
    thr = tmp_path / "thr.json"
    thr.write_text('{"thresholds": {"finger-1": 1.0, "Ulna": 0.0}}')
    run("predict", one_image, "-m", ckpt, "-o", tuned, "--threshold", thr, "--workers", "0")
    a, b = read_submission(base), read_submission(tuned)
    name = a.images[0]
    assert b.rles[(name, "finger-1")] == "" and a.rles[(name, "finger-1")] != ""
    assert b.rles[(name, "Ulna")] == f"1 {256 * 256}"
    for c in CLASSES[1:-1]:
        assert a.rles[(name, c)] == b.rles[(name, c)]
    thr.write_text('{"finger-100": 0.4}')
    with pytest.raises(DataError, match="thr.json.*finger-100"):
        predict(one_image, [ckpt], tmp_path / "x.csv", threshold=thr, options=PredictOptions(workers=0))
    with pytest.raises(UsageError, match="--threshold"):
        predict(one_image, [ckpt], tmp_path / "x.csv", threshold="nope.json", options=PredictOptions(workers=0))


def test_nothing_overwritten_without_force(one_image, ckpt, tmp_path):
    out = tmp_path / "sub.csv"
    out.write_text("keep me")
    with pytest.raises(OutputExistsError):
        predict(one_image, [ckpt], out, options=PredictOptions(workers=0))
    assert out.read_text() == "keep me"
    pdir = tmp_path / "probs"
    pdir.mkdir()
    (pdir / "old.npz").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        predict(one_image, [ckpt], tmp_path / "new.csv", save_probs=pdir, options=PredictOptions(workers=0))
    assert not (tmp_path / "new.csv").exists()
    result = runner.invoke(app, ["predict", str(one_image), "-m", str(ckpt), "-o", str(out), "--workers", "0"])
    assert isinstance(result.exception, OutputExistsError)
    run("predict", one_image, "-m", ckpt, "-o", out, "--workers", "0", "--force")
    assert out.read_text().startswith("image_name,class,rle")


def test_save_probs_refuses_images_sharing_a_probability_file(one_image, ckpt, tmp_path, capsys):
    """a.png and a.PNG are two images but one a.npz: the second would silently replace the first's."""
    folder = tmp_path / "imgs"
    (folder / "ID001").mkdir(parents=True)
    src = next(one_image.iterdir())
    shutil.copy(src, folder / "ID001" / "a.png")
    shutil.copy(src, folder / "a.PNG")
    args = ["predict", folder, "-m", ckpt, "-o", tmp_path / "s.csv", "--workers", "0", "--save-probs", tmp_path / "p"]
    code, _, err = cli(capsys, *args)
    assert code == 1
    assert error_line(err) == "Error: --save-probs: images a.png and a.PNG would share the probability file a.npz"
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "p").exists()


def test_bad_options_are_one_line_errors(one_image, ckpt, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[3] / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "boneseg", "predict", str(one_image), "-m", str(ckpt), "--tta", "hflp"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "'hflip'" in proc.stderr
    with pytest.raises(UsageError, match="--window"):
        predict(one_image, [ckpt], tmp_path / "x.csv", sliding=True, options=PredictOptions(window=100, workers=0))


def test_postprocess_in_predict(one_image, ckpt, tmp_path):
    import cv2

    out = tmp_path / "pp.csv"
    run("predict", one_image, "-m", ckpt, "-o", out, "--keep-largest", "--workers", "0")
    sub = read_submission(out)
    masks = sub.masks(sub.images[0], (256, 256))
    for m in masks:
        if m.any():
            assert cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[0] == 2


def test_two_rank_sharding_equals_single_process(synth_data, ckpt, tmp_path):
    images = tmp_path / "images"  # three images: uneven shards
    for s in find_images(synth_data) + [find_images(synth_data / "train" / "DCM")[0]]:
        (images / s.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(s.image, images / s.name)
    single = tmp_path / "single.csv"
    predict(images, [ckpt], single, save_probs=tmp_path / "p1", options=PredictOptions(workers=0))
    sharded = tmp_path / "sharded.csv"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[3] / "src"), OMP_NUM_THREADS="1")
    # each rank gets its own temp folder, as ranks on different nodes would: the parts travel through
    # the process group, not through a shared file system
    for r in (0, 1):
        (tmp_path / f"tmp{r}").mkdir()
    command = (
        f'TMPDIR="{tmp_path}/tmp$LOCAL_RANK" exec "{sys.executable}" -m boneseg predict "{images}" '
        f'-m "{ckpt}" -o "{sharded}" --device cpu --workers 0 --save-probs "{tmp_path / "p2"}"'
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "--no-python",
            "sh",
            "-c",
            command,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sharded.read_bytes() == single.read_bytes()
    assert probs.read_manifest(tmp_path / "p2")["images"] == probs.read_manifest(tmp_path / "p1")["images"]
    assert not list((tmp_path / "tmp0").iterdir()) and not list((tmp_path / "tmp1").iterdir())


def test_a_failing_rank_stops_sharded_predict_at_once_and_leaves_nothing(synth_data, ckpt, tmp_path):
    images = tmp_path / "images"  # rank 1's image is corrupt; rank 0 finishes first and waits to gather
    images.mkdir()
    for s in find_images(synth_data)[:2]:
        shutil.copy(s.image, images / Path(s.name).name)
    bad = sorted(images.iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:100])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[3] / "src"), OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    args = ["-m", "boneseg", "predict", images, "-m", ckpt, "-o", tmp_path / "sub.csv", "--device", "cpu"]
    args += ["--workers", "0", "--save-probs", tmp_path / "probs"]
    proc = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert f"Error: [rank 1] {bad}: unreadable or corrupt image" in proc.stderr
    # rank 0 learns it from the broken gather or from torchrun stopping it, whichever comes first on a busy machine
    said = re.search(r"Error: \[rank 0\] (another rank failed or stopped responding|predict interrupted)", proc.stderr)
    assert said, proc.stderr[-2000:]
    assert "rerun the same command" in proc.stderr and "SIGKILL" not in proc.stderr  # stopped, not killed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
