"""`boneseg ensemble`: run-length hard voting, soft voting over probability folders, per-class plans."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from boneseg import probs, rle
from boneseg.classes import CLASSES
from boneseg.cli import app
from boneseg.errors import BonesegWarning, DataError, OutputExistsError, UsageError
from boneseg.submission import SubmissionWriter, read_submission
from boneseg.workflows.ensemble import hard_vote, per_class_from_scores, read_per_class, soft_vote, vote_runs

H, W = 24, 40
IMAGES = [f"image16613190000{i:02d}.png" for i in range(3)]


def blob_masks(rng: np.random.Generator, n_images: int = len(IMAGES)) -> np.ndarray:
    """(images, 29, H, W) masks of random rectangles plus speckle: runs that start, end and wrap anywhere."""
    out = np.zeros((n_images, len(CLASSES), H, W), bool)
    for i in range(n_images):
        for c in range(len(CLASSES)):
            if rng.random() < 0.1:
                continue  # some empty masks
            y0, x0 = rng.integers(0, H - 2), rng.integers(0, W - 2)
            out[i, c, y0 : y0 + rng.integers(2, H), x0 : x0 + rng.integers(2, W)] = True
            out[i, c] ^= rng.random((H, W)) < 0.08
    out[0, 0, :, :] = True  # a full mask: one run across every row
    return out


def write_csv(path, masks, images=IMAGES, shuffle: int | None = None):
    with SubmissionWriter(path) as w:
        for name, m in zip(images, masks):
            w.write_masks(name, m)
    if shuffle is not None:
        lines = path.read_text().splitlines(keepends=True)
        body = lines[1:]
        random.Random(shuffle).shuffle(body)
        path.write_text(lines[0] + "".join(body))
    return path


def read_masks(path, images=IMAGES):
    sub = read_submission(path)
    return np.stack([sub.masks(name, (H, W)) for name in images])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Four submissions of the same three images; the second one's rows are shuffled."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("ens")
    masks = [blob_masks(rng) for _ in range(4)]
    paths = [write_csv(folder / f"m{k}.csv", m, shuffle=(7 if k == 1 else None)) for k, m in enumerate(masks)]
    return paths, np.stack(masks)


def test_vote_runs_matches_a_pixel_vote():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 6))
        h, w = (int(v) for v in rng.integers(1, 9, 2))
        masks = rng.random((n, h, w)) < rng.random()
        weights = rng.integers(0, 4, n).astype(float)
        weights[0] += 1
        cut = float(rng.integers(1, int(weights.sum()) + 1)) - 0.5
        runs = [rle.parse(rle.encode(m), h * w) for m in masks]
        got = rle.runs_to_rle(*vote_runs(runs, weights, cut))
        assert got == rle.encode((masks * weights[:, None, None]).sum(0) > cut)


@pytest.mark.parametrize("k", [None, 1, 2, 3, 4])
def test_hard_vote_equals_reference_for_each_k(inputs, tmp_path, k):
    paths, masks = inputs
    out = hard_vote(paths, tmp_path / "vote.csv", min_votes=k, shape=(H, W), workers=1)
    need = k if k is not None else len(paths) // 2 + 1  # default: strict majority (3 of 4)
    assert out.images == len(IMAGES)
    np.testing.assert_array_equal(read_masks(tmp_path / "vote.csv"), masks.sum(0) >= need)
    assert read_submission(tmp_path / "vote.csv").images == sorted(IMAGES)


def test_row_order_does_not_matter_and_processes_agree(inputs, tmp_path):
    paths, _ = inputs
    hard_vote(paths, tmp_path / "a.csv", shape=(H, W), workers=1)
    shuffled = [write_csv(tmp_path / f"s{k}.csv", read_masks(p), shuffle=k) for k, p in enumerate(paths)]
    hard_vote(shuffled, tmp_path / "b.csv", shape=(H, W), workers=2)
    a, b = read_submission(tmp_path / "a.csv"), read_submission(tmp_path / "b.csv")
    assert a.rles == b.rles  # the same masks, whatever the rows' order
    # images in the first input's order: predict's relative-path order, which base names alone cannot rebuild
    assert b.images == read_submission(shuffled[0]).images and a.images == IMAGES
    assert len({tuple(read_submission(p).images) for p in shuffled}) > 1  # the shuffles did reorder images


def test_weighted_vote_and_per_class_plan(inputs, tmp_path):
    paths, masks = inputs
    names = [str(p) for p in paths]
    hard_vote(paths, tmp_path / "w.csv", weights=[3, 1, 1, 0.5], shape=(H, W), workers=1)
    w = np.array([3, 1, 1, 0.5])[:, None, None, None, None]
    np.testing.assert_array_equal(read_masks(tmp_path / "w.csv"), (masks * w).sum(0) > 2.75)

    plan = {"Pisiform": 2, "Radius": paths[3].name, "finger-1": [0.5, 0.3, 0.2, 0.0]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    hard_vote(paths, tmp_path / "p.csv", per_class=tmp_path / "plan.json", shape=(H, W), workers=1)
    got = read_masks(tmp_path / "p.csv")
    ci = CLASSES.index
    np.testing.assert_array_equal(got[:, ci("Pisiform")], masks[2][:, ci("Pisiform")])
    np.testing.assert_array_equal(got[:, ci("Radius")], masks[3][:, ci("Radius")])
    weighted = (masks[:, :, ci("finger-1")] * np.array([0.5, 0.3, 0.2, 0])[:, None, None, None]).sum(0) > 0.5
    np.testing.assert_array_equal(got[:, ci("finger-1")], weighted)
    np.testing.assert_array_equal(got[:, ci("Ulna")], masks[:, :, ci("Ulna")].sum(0) >= 3)  # default rule

    (tmp_path / "plan.json").write_text(json.dumps({"Pisifrom": 0}))
    with pytest.raises(DataError, match=r"plan.json: unknown class 'Pisifrom'; did you mean 'Pisiform'"):
        read_per_class(tmp_path / "plan.json", names)
    with pytest.raises(DataError, match="input index 9 out of range"):
        read_per_class({"Radius": 9}, names)
    with pytest.raises(DataError, match="expected 4 weights"):
        read_per_class({"Radius": [1, 2]}, names)


def test_two_input_intersection_warning_only_where_the_default_rule_applies(inputs, tmp_path):
    """The 2-input warning names the intersection, which a plan deciding every class never takes."""
    two = inputs[0][:2]
    with pytest.warns(BonesegWarning, match="intersection"):
        hard_vote(two, tmp_path / "a.csv", per_class={"Radius": 1}, shape=(H, W), workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hard_vote(two, tmp_path / "b.csv", per_class=dict.fromkeys(CLASSES, 1), shape=(H, W), workers=1)
    np.testing.assert_array_equal(read_masks(tmp_path / "b.csv"), inputs[1][1])


def test_per_class_from_scores(tmp_path):
    a = {"mean_dice": 0.9, "per_class_dice": dict.fromkeys(CLASSES, 0.9)}
    b = {"per_class_dice": {**dict.fromkeys(CLASSES, 0.8), "Pisiform": 0.95}}
    tta = {
        "best": "hflip",
        "policies": {
            "none": {"per_class_dice": dict.fromkeys(CLASSES, 0.99)},
            "hflip": {"per_class_dice": dict.fromkeys(CLASSES, 0.7) | {"Ulna": 0.97}},
        },
    }
    (tmp_path / "a.json").write_text(json.dumps(a))
    plan = per_class_from_scores([tmp_path / "a.json", b, tta], ["a.csv", "b.csv", "c.csv"])
    assert plan["Pisiform"] == "b.csv" and plan["Ulna"] == "c.csv" and plan["Radius"] == "a.csv"
    assert per_class_from_scores([a, b])["Pisiform"] == 1
    with pytest.raises(DataError, match="no 'per_class_dice'"):
        per_class_from_scores([{"mean_dice": 1.0}])


def test_mismatched_and_malformed_inputs_name_the_culprit(inputs, tmp_path):
    paths, masks = inputs
    fewer = write_csv(tmp_path / "fewer.csv", masks[1][:2], IMAGES[:2])
    with pytest.raises(DataError, match=rf"fewer.csv: lacks image '{IMAGES[2]}' \(in .*m0.csv\)"):
        hard_vote([paths[0], fewer], tmp_path / "o.csv", shape=(H, W), workers=1)
    other = write_csv(tmp_path / "other.csv", masks[1], IMAGES[:2] + ["zzz.png"])
    with pytest.raises(DataError, match="other.csv: lacks image"):
        hard_vote([paths[0], other], tmp_path / "o.csv", shape=(H, W), workers=1)
    more = write_csv(tmp_path / "more.csv", np.concatenate([masks[1], masks[1][:1]]), IMAGES + ["zzz.png"])
    with pytest.raises(DataError, match="more.csv: has image 'zzz.png' that .*m0.csv lacks"):
        hard_vote([paths[0], more], tmp_path / "o.csv", shape=(H, W), workers=1)

    text = paths[2].read_text().splitlines()
    row = next(i for i, line in enumerate(text) if line.startswith(f"{IMAGES[1]},Lunate,"))
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(text[:row] + [f"{IMAGES[1]},Lunate,5 3 1 2"] + text[row + 1 :]) + "\n")
    with pytest.raises(DataError, match=rf"bad.csv: image '{IMAGES[1]}', class 'Lunate': malformed RLE: run 2"):
        hard_vote([paths[0], paths[1], bad], tmp_path / "o.csv", shape=(H, W), workers=2)
    with pytest.raises(DataError, match=r"class 'finger-1': malformed RLE: run ends at pixel \d+, past the image"):
        hard_vote(paths, tmp_path / "o.csv", shape=(H // 2, W), workers=1)
    missing = tmp_path / "missing.csv"
    missing.write_text("\n".join(line for line in text if not line.startswith(f"{IMAGES[0]},Ulna,")) + "\n")
    with pytest.raises(DataError, match=rf"missing.csv: image '{IMAGES[0]}' lacks 1 class row\(s\): Ulna"):
        hard_vote([paths[0], missing], tmp_path / "o.csv", shape=(H, W), workers=1)
    assert not (tmp_path / "o.csv").exists()  # nothing half-written

    with pytest.raises(UsageError, match="--min-votes must be within 1..4"):
        hard_vote(paths, tmp_path / "o.csv", min_votes=5, shape=(H, W))
    hard_vote(paths, tmp_path / "o.csv", shape=(H, W), workers=1)
    with pytest.raises(OutputExistsError):
        hard_vote(paths, tmp_path / "o.csv", shape=(H, W), workers=1)


# -- soft vote ------------------------------------------------------------------------------------


def write_probs(folder, qs, images=IMAGES):
    for name, q in zip(images, qs):
        probs.save(folder, name, q)
    probs.write_manifest(folder, list(images), ["test-model"])
    return folder


@pytest.fixture(scope="module")
def prob_folders(tmp_path_factory):
    rng = np.random.default_rng(2)
    root = tmp_path_factory.mktemp("probs")
    qs = rng.integers(0, 256, (3, len(IMAGES), len(CLASSES), H, W)).astype(np.uint8)
    return [write_probs(root / f"p{k}", q) for k, q in enumerate(qs)], qs


def test_soft_vote_one_folder_reproduces_predict(prob_folders, tmp_path):
    folders, qs = prob_folders
    soft_vote(folders[:1], tmp_path / "one.csv", weights=[1.0], threshold=0.5, workers=1)
    with SubmissionWriter(tmp_path / "predict.csv") as w:  # what `predict` writes from the same values
        for name, q in zip(IMAGES, qs[0]):
            w.write_masks(name, probs.binarize(q, 0.5))
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "predict.csv").read_bytes()


def test_soft_vote_weights_thresholds_and_per_class(prob_folders, tmp_path):
    folders, qs = prob_folders
    weights = np.array([0.5, 0.3, 0.2])
    thresholds = {"Radius": 0.3, "Ulna": 0.7}
    soft_vote(folders, tmp_path / "soft.csv", weights=weights, threshold=thresholds, workers=2)
    mean = np.rint((qs.astype(np.float64) * weights[:, None, None, None, None]).sum(0)).astype(np.uint8)
    cuts = np.full(len(CLASSES), 0.5)
    cuts[CLASSES.index("Radius")], cuts[CLASSES.index("Ulna")] = 0.3, 0.7
    expected = mean > np.floor(cuts * 255 + 1e-9)[None, :, None, None]
    np.testing.assert_array_equal(read_masks(tmp_path / "soft.csv"), expected)
    assert expected[:, CLASSES.index("Ulna")].mean() < expected[:, CLASSES.index("Radius")].mean()

    soft_vote(folders, tmp_path / "pc.csv", per_class={"Lunate": 2}, workers=1)
    got = read_masks(tmp_path / "pc.csv")
    np.testing.assert_array_equal(got[:, CLASSES.index("Lunate")], qs[2][:, CLASSES.index("Lunate")] > 127)


def test_soft_vote_rejects_mismatched_folders(prob_folders, tmp_path):
    folders, qs = prob_folders
    fewer = write_probs(tmp_path / "fewer", qs[1][:2], IMAGES[:2])
    with pytest.raises(DataError, match=rf"fewer: lacks image '{IMAGES[2]}' \(in .*p0\)"):
        soft_vote([folders[0], fewer], tmp_path / "o.csv")
    small = write_probs(tmp_path / "small", qs[1][:, :, : H // 2])
    with pytest.raises(DataError, match=rf"image '{IMAGES[0]}': probabilities of shape \({H // 2}, {W}\) in .*small"):
        soft_vote([folders[0], small], tmp_path / "o.csv", workers=1)
    with pytest.raises(DataError, match="probability folder not found"):
        soft_vote([folders[0], tmp_path / "nope"], tmp_path / "o.csv")
    swapped = write_probs(tmp_path / "swapped", qs[1])
    shutil.copy(swapped / f"{Path(IMAGES[1]).stem}.npz", swapped / f"{Path(IMAGES[0]).stem}.npz")
    with pytest.raises(DataError, match=rf"holds the probabilities of {IMAGES[1]}, not of {IMAGES[0]}"):
        soft_vote([folders[0], swapped], tmp_path / "o.csv", workers=1)
    nameless = write_probs(tmp_path / "nameless", qs[1])
    np.savez_compressed(nameless / f"{Path(IMAGES[0]).stem}.npz", probs=qs[1][0])  # no image_name inside
    with pytest.raises(DataError, match=rf"nameless/.*\.npz: no image name inside .* of {IMAGES[0]}"):
        soft_vote([folders[0], nameless], tmp_path / "o.csv", workers=1)
    with pytest.raises(UsageError, match="expected 2 weights"):
        soft_vote(folders[:2], tmp_path / "o.csv", weights=[1.0])


# -- command line ---------------------------------------------------------------------------------


def test_cli_hard_soft_and_scores(inputs, prob_folders, tmp_path):
    paths, masks = inputs
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "ensemble",
            *map(str, paths[:3]),
            "--vote",
            "hard",
            "--min-votes",
            "2",
            "--size",
            f"{H}x{W}",
            "--workers",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("image_name,class,rle\n") and res.stdout.count("\n") == 1 + 29 * len(IMAGES)

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"per_class_dice": dict.fromkeys(CLASSES, 0.9)}))
    b.write_text(json.dumps({"per_class_dice": dict.fromkeys(CLASSES, 0.5) | {"Hamate": 0.99}}))
    res = runner.invoke(
        app,
        [
            "ensemble",
            str(paths[0]),
            str(paths[1]),
            "--scores",
            str(a),
            "--scores",
            str(b),
            "--per-class-out",
            str(tmp_path / "plan.json"),
            "--size",
            f"{H}x{W}",
            "-o",
            str(tmp_path / "best.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["Hamate"] == str(paths[1]) and plan["Capitate"] == str(paths[0])
    got = read_masks(tmp_path / "best.csv")
    np.testing.assert_array_equal(got[:, CLASSES.index("Hamate")], masks[1][:, CLASSES.index("Hamate")])

    folders, _ = prob_folders
    res = runner.invoke(
        app,
        [
            "ensemble",
            *map(str, folders),
            "--weights",
            "1,1",
            "--weights",
            "2",
            "--threshold",
            "0.4",
            "-o",
            str(tmp_path / "soft.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert read_submission(tmp_path / "soft.csv").images == IMAGES


def test_cli_errors_are_one_line(inputs, tmp_path):
    paths, _ = inputs
    bad = tmp_path / "bad.csv"
    bad.write_text(paths[0].read_text().replace(",Radius,", ",Radios,", 1))
    res = subprocess.run(
        [sys.executable, "-m", "boneseg", "ensemble", str(paths[0]), str(bad), "--size", f"{H}x{W}"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"Error: {bad}: row ") and "unknown class 'Radios'" in line
    res = subprocess.run(
        [sys.executable, "-m", "boneseg", "ensemble", str(paths[0]), "--vote", "soft", "--min-votes", "1"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stderr.strip() == "Error: --min-votes applies to --vote hard only"


def test_one_entry_point_infers_and_checks_the_vote(inputs, tmp_path):
    """`ensemble.ensemble` is what the command runs: the vote inferred from the inputs, options of the other
    vote and contradictory ones refused from Python too, before any output is written."""
    from boneseg.workflows.ensemble import ensemble

    paths, masks = inputs
    summary = ensemble(paths[:3], tmp_path / "e.csv", shape=(H, W), workers=1)
    assert summary.vote == "hard" and read_masks(tmp_path / "e.csv").shape == masks[0].shape
    hard_vote(paths[:3], tmp_path / "h.csv", shape=(H, W), workers=1)
    assert (tmp_path / "e.csv").read_bytes() == (tmp_path / "h.csv").read_bytes()
    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({"per_class_dice": dict.fromkeys(CLASSES, 0.5)}))
    for kwargs, message in [
        ({"threshold": 0.4}, r"^--threshold applies to --vote soft only$"),
        ({"calibration": ["none"] * 3}, r"^--calibration applies to --vote soft only$"),
        ({"vote": "soft", "min_votes": 1}, r"^--min-votes applies to --vote hard only$"),
        ({"vote": "soft"}, r"^--vote soft takes probability folders; .*m0\.csv is not a folder$"),
        ({"vote": "sfot"}, r"^--vote must be hard or soft, got 'sfot'"),
        ({"per_class_out": tmp_path / "pc.json"}, r"^--per-class-out needs --scores$"),
        ({"per_class": {"Radius": 0}, "scores": [scores] * 3}, r"^give either --per-class or --scores"),
        ({"min_votes": 9}, r"min.votes"),
    ]:
        with pytest.raises(UsageError, match=message):
            ensemble(paths[:3], tmp_path / "x.csv", shape=(H, W), **kwargs)
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(UsageError, match=r"^inputs mix folders and files"):
        ensemble([paths[0], tmp_path], tmp_path / "x.csv")
    summary = ensemble(paths[:3], tmp_path / "b.csv", scores=[scores] * 3, per_class_out=tmp_path / "pc.json")
    assert summary.per_class_out == str(tmp_path / "pc.json") and (tmp_path / "pc.json").is_file()
