"""One home per rule: every caller uses the same function, and the shared rule behaves the same for all."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from boneseg.cli import main
from boneseg.errors import DataError


def cli(capsys, *args) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


# -- unique image names ---------------------------------------------------------------------------


def test_unique_names_have_one_home():
    from boneseg.data import layout
    from boneseg.inference import run
    from boneseg.workflows import analysis, pseudo

    assert run.by_image_name is pseudo.by_image_name is layout.by_image_name
    assert not hasattr(run, "check_unique_names")
    assert (
        "by_image_name" in analysis.load_inputs.__code__.co_names
        or "by_image_name" in analysis.load_inputs.__code__.co_varnames
    )


def test_duplicate_base_names_name_both_images(tmp_path, capsys):
    from boneseg.data.layout import by_image_name, find_images

    for patient in ("ID001", "ID002"):
        (tmp_path / "imgs" / patient).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "imgs" / patient / "x.png"), np.zeros((8, 8), np.uint8))
    samples = find_images(tmp_path / "imgs")
    with pytest.raises(DataError, match=r"^here: two images named x\.png \(ID001/x\.png, ID002/x\.png\)"):
        by_image_name(samples, "here")
    code, err = cli(capsys, "predict", tmp_path / "imgs", "-m", tmp_path / "no-run", "-o", tmp_path / "s.csv")
    assert code == 1 and "two images named x.png (ID001/x.png, ID002/x.png)" in err, err
    assert "Traceback" not in err


# -- hand side ------------------------------------------------------------------------------------


def test_hand_side_has_one_home():
    from boneseg.data import layout
    from boneseg.inference import predictor, wrist

    assert predictor.side_from_masks is wrist.side_from_masks is layout.side_from_masks
    assert not hasattr(predictor, "side_from_probs")
    assert wrist.side_from_masks is layout.side_from_masks


def test_training_target_and_prediction_read_the_side_alike():
    """A thumb blob with a long thin spur: by its pixels it lies left of the little finger (a right hand),
    although its occupied columns reach past it. Target and prediction must both say right."""
    from boneseg.classes import CLASS_INDEX
    from boneseg.data.layout import side_from_masks
    from boneseg.modelling.heads import side_target

    masks = np.zeros((29, 64, 128), bool)
    masks[CLASS_INDEX["finger-1"], :, 10:21] = True
    masks[CLASS_INDEX["finger-1"], 0, 10:100] = True
    masks[CLASS_INDEX["finger-16"], :, 40:51] = True
    assert side_target(masks) == 1.0
    assert side_from_masks(torch.from_numpy(masks).float() * 0.9) == "R"
    assert side_target(masks[:, :, ::-1]) == 0.0


# -- mask bounding boxes --------------------------------------------------------------------------


def test_mask_bbox_has_one_home():
    from boneseg import maskops, plots, postprocess, rle
    from boneseg.data import masks, wrist
    from boneseg.workflows import pseudo

    for module in (plots, postprocess, rle, masks, wrist, pseudo):
        assert module.bbox is maskops.bbox, module.__name__
    assert not hasattr(postprocess, "_bbox") and not hasattr(plots, "_box") and not hasattr(rle, "_row_extent")


@pytest.mark.parametrize("layout", ["contiguous", "strided", "uint8"])
def test_bbox_and_its_users_agree(layout):
    from boneseg.data.masks import pack_masks, unpack_masks
    from boneseg.data.wrist import CARPAL_IDX, box_from_masks, square_box
    from boneseg.maskops import bbox

    m = np.zeros((200, 90), bool)
    m[70, 5] = m[150, 40:60] = True  # rows 70..150 (below the first 64-row block), cols 5..59
    m = {"contiguous": m, "strided": np.asfortranarray(m), "uint8": m.astype(np.uint8) * 255}[layout]
    assert bbox(m) == (70, 151, 5, 60)
    assert bbox(np.zeros((4, 4), bool)) is None
    boxes, bits = pack_masks(np.stack([m != 0, np.zeros_like(m, bool)]))
    assert boxes.tolist() == [[70, 151, 5, 60], [0, 0, 0, 0]]
    assert np.array_equal(unpack_masks(boxes, bits, m.shape)[0], m != 0)
    probs = np.zeros((29, *m.shape), np.float32)
    probs[CARPAL_IDX[0]] = m != 0
    want = square_box(70, 151, 5, 60, m.shape)
    assert box_from_masks(probs) == want == box_from_masks(torch.from_numpy(probs))


# -- device and process group ---------------------------------------------------------------------


def test_device_and_process_group_have_one_home():
    from boneseg.engine import distributed, train
    from boneseg.inference import predictor, run

    assert predictor.resolve_device is distributed.resolve_device
    assert run.setup is distributed.setup and run.cleanup is distributed.cleanup
    assert train.D is distributed and not hasattr(run, "dist_context")


def test_device_names_are_checked_alike():
    from boneseg.engine.distributed import resolve_device
    from boneseg.errors import UsageError

    assert resolve_device(torch.device("cpu")) == resolve_device("CPU") == torch.device("cpu")
    for bad in ("mps", "gpu", "cuda:x"):
        with pytest.raises(UsageError, match=r"^--device .*expected auto, cpu or cuda\[:N\]"):
            resolve_device(bad)
    with pytest.raises(UsageError, match=r"^--device cuda:99: "):
        resolve_device("cuda:99")


def test_a_callers_process_group_is_left_alone(tmp_path, monkeypatch):
    """`setup` inside a group someone else made joins it and `cleanup` leaves it (predict and train alike)."""
    import torch.distributed as dist

    from boneseg.engine.distributed import cleanup, setup

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        info = setup("cpu")
        assert (info.rank, info.world_size, info.created) == (0, 1, False)
        cleanup(info)
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


# -- predictions read back (CSV or probability folder) ---------------------------------------------


def test_prediction_source_has_one_home():
    from boneseg import predictions
    from boneseg.workflows import audit, masks, pseudo

    assert pseudo.open_predictions is audit.open_predictions is predictions.open_predictions
    for module in (pseudo, audit):
        assert not hasattr(module, "read_submission") and not hasattr(module, "open_source"), module.__name__
    assert not hasattr(pseudo, "_CsvSource") and not hasattr(pseudo, "_ProbsSource")
    for reader in (masks._csv_source, masks._probs_source):
        assert "read_submission" not in reader.__code__.co_names and "read_manifest" not in reader.__code__.co_names


def _probs_folder(folder, q):
    from boneseg import probs

    folder.mkdir()
    probs.save(folder, "a.png", q)
    probs.write_manifest(folder, ["a.png"], ["model"], {})
    return folder


def test_prediction_sources_check_alike(tmp_path):
    """pseudo, audit and masks refuse thresholds searched on calibrated probabilities for uncalibrated ones
    (audit and pseudo applied them silently) and a probability file of another size than its image."""
    import json

    from boneseg.predictions import open_predictions
    from boneseg.workflows.audit import Predictions

    q = np.zeros((29, 6, 8), np.uint8)
    q[:, 1:4, 2:5] = 200
    folder = _probs_folder(tmp_path / "probs", q)
    calibrated = tmp_path / "t.json"
    calibrated.write_text(json.dumps({"calibration": "cal.json", "thresholds": {"Radius": 0.4}}))
    for opener in (open_predictions, Predictions):
        with pytest.raises(DataError, match=r"^--threshold .*t\.json: thresholds searched on calibrated"):
            opener(folder, str(calibrated))
    src = open_predictions(folder, 0.5)
    masks, conf = src.masks("a.png", (6, 8))
    assert masks.sum() == 29 * 9 and np.allclose(conf, 200 / 255)
    with pytest.raises(DataError, match=r"a\.npz: probabilities are 8x6 but the image is 9x6$"):
        src.masks("a.png", (6, 9))
    got, prob = Predictions(folder).get("a.png", (6, 8), (6, 8))
    assert np.array_equal(got, masks) and np.allclose(prob, q / 255)


# -- run-length Dice ------------------------------------------------------------------------------


def test_run_length_dice_has_one_home():
    import ast
    from pathlib import Path

    import boneseg
    from boneseg import rle_dice
    from boneseg.workflows import analysis, postprocess_csv, select

    assert analysis.intersections is rle_dice.intersections and analysis.runs_table is rle_dice.runs_table
    assert select.RunTable is rle_dice.RunTable
    assert (
        "overlap"
        in postprocess_csv.postprocess_csv.__code__.co_names + postprocess_csv.postprocess_csv.__code__.co_varnames
    )
    root = Path(boneseg.__file__).parent
    engine = {"RunTable", "runs_table", "intersections", "run_dice", "iou_from_counts"}
    for path in root.rglob("*.py"):
        if path.name == "rle_dice.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not defined & engine, f"{path.relative_to(root)} defines {sorted(defined & engine)}"
        sweeps = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "covered_before"]
        assert not sweeps, f"{path.relative_to(root)} sweeps runs itself (use boneseg.rle_dice)"


# -- competition label JSON written ---------------------------------------------------------------


def test_label_writer_has_one_home():
    """Only `boneseg.data.labels` builds a ``poly_seg`` annotation; synth and pseudo write through it."""
    import ast
    from pathlib import Path

    import boneseg
    from boneseg.data import labels, synth
    from boneseg.workflows import pseudo

    assert pseudo.label_document is synth.label_document is labels.label_document
    root = Path(boneseg.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        builds = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "points" for k in n.keys)
        ]
        if path.relative_to(root).as_posix() != "data/labels.py":
            assert not builds, f"{path.relative_to(root)} builds a label annotation (use boneseg.data.labels)"


def test_written_labels_read_back(tmp_path):
    from boneseg.data.labels import label_document, stable_id, write_label
    from boneseg.data.masks import load_label

    square = np.array([[1, 1], [5, 1], [5, 4], [1, 4]], np.int32)
    polygons = {"Radius": square, "finger-1": square + 1}
    doc = label_document(polygons, "x.png", (8, 10), source="test")
    assert [a["label"] for a in doc["annotations"]] == ["finger-1", "Radius"]  # class order
    assert doc["annotations"][0]["id"] == stable_id("x.png/finger-1") and "file_id" not in doc
    path = write_label(tmp_path / "ID001" / "x.json", doc)
    label = load_label(path, (8, 10), strict=False)
    assert {k: v.tolist() for k, v in label.polygons.items()} == {k: v.tolist() for k, v in polygons.items()}
    ids = iter(["a", "b", "c"])
    drawn = label_document(polygons, "x.png", (8, 10), new_id=lambda _: next(ids), file_id=True)
    assert [a["id"] for a in drawn["annotations"]] == ["a", "b"] and drawn["file_id"] == "c"
    assert list(drawn) == ["annotations", "attributes", "file_id", "filename", "metadata"]


# -- the run format -------------------------------------------------------------------------------

RUN_FILE_NAMES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "postprocess.json", "calibration.json")
SPELLED_ELSEWHERE = {("boneseg.inference.exported", "config.json")}
"""(module, name) pairs that name another format's file: an smp/Hugging Face export folder's own config.json."""


def _code_strings(path):
    """The string constants of a module's code (f-string parts included), docstrings left out."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.value


def test_only_the_run_format_spells_a_run_folders_file_names():
    """`boneseg.runs.files` names the files of a run folder; every other module uses its names."""
    import re
    from pathlib import Path

    import boneseg
    from boneseg.runs import files

    assert {files.CONFIG, files.METRICS, files.LAST, files.BEST, files.POSTPROCESS, files.CALIBRATION} == set(
        RUN_FILE_NAMES
    )
    root = Path(boneseg.__file__).parent
    spelled = re.compile(r"(^|/)(" + "|".join(map(re.escape, RUN_FILE_NAMES)) + r")$")
    offenders = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("boneseg", *path.relative_to(root).with_suffix("").parts))
        if module.startswith("boneseg.runs."):
            continue
        for text in _code_strings(path):
            found = spelled.search(text)
            if found and (module, found.group(2)) not in SPELLED_ELSEWHERE:
                offenders.append(f"{module}: {text!r}")
    assert not offenders, offenders


def test_the_run_format_has_one_home():
    """The config schema, the resume policy, checkpoints and the hand-side alias each live once, in
    `boneseg.runs`; training and inference take them from there."""
    from boneseg.engine import checks, plan, state, train
    from boneseg.inference import exported, predictor
    from boneseg.runs import checkpoint, config, config_file, run

    assert train.TrainConfig is config.TrainConfig is predictor.TrainConfig is exported.TrainConfig
    assert checks.load_config is config.load_config and exported.check_input is config.check_input
    assert state.save_checkpoints is checkpoint.save_checkpoints and run.load_checkpoint is checkpoint.load_checkpoint
    assert plan.resolve_config is train.resolve_config is checks.resolve_config
    assert config_file.field_name is config.field_name
    assert config.ALIASES == {"unify_hands": "unify_side"}
    import boneseg

    root = Path(boneseg.__file__).parent
    aliased = sorted(
        ".".join(path.relative_to(root).with_suffix("").parts)
        for path in root.rglob("*.py")
        if "unify_hands" in set(_code_strings(path))
    )
    # besides the alias: the option's parameter name (help panels) and the demo's own setting of that name
    assert aliased == ["cli.app", "runs.config", "workflows.demo"], aliased
    for module in (train, checks, state, plan):
        assert not hasattr(module, "merge_resume") and not hasattr(module, "FIXED_ON_RESUME"), module.__name__


# -- the per-image prediction loop ---------------------------------------------------------------


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory):
    """Two tiny runs (one training step), one per fold of 2 patients (4 train images, 2 test images)."""
    from util import tiny_config, write_dataset

    from boneseg.engine.train import train

    root = tmp_path_factory.mktemp("loop")
    data = write_dataset(root / "data", patients=2, size=64, test_patients=1)
    runs = []
    for k in range(2):
        train(tiny_config(data, root / f"run{k}", fold=k, folds=2, max_steps=1, aug="none"))
        runs.append(root / f"run{k}")
    return data, runs


def test_every_prediction_runs_the_one_image_stream(two_folds, tmp_path, monkeypatch):
    """predict, tta, fit_postprocess and oof predict each image in `boneseg.inference.pipeline` alone, and each
    runs the stages' plan before and after around every prediction (fit_postprocess once skipped them)."""
    import inspect

    from boneseg.inference import PredictOptions, predict
    from boneseg.inference.predictor import Predictor
    from boneseg.inference.stages import ImageStages
    from boneseg.workflows.oof import oof
    from boneseg.workflows.validation import evaluate_policies, fit_postprocess

    data, runs = two_folds
    calls: list[tuple[str, str]] = []  # (what, the calling module)

    def spy(cls, name):
        original = getattr(cls, name)

        def wrapped(*args, **kwargs):
            calls.append((name, inspect.stack()[1].frame.f_globals["__name__"]))
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, name, wrapped)

    for cls, name in ((Predictor, "predict"), (ImageStages, "plan"), (ImageStages, "before"), (ImageStages, "after")):
        spy(cls, name)
    on = PredictOptions(device="cpu", workers=0)
    jobs = {
        "predict": lambda: predict(data, [runs[0]], tmp_path / "p.csv", options=on),  # the 2 test images
        "tta": lambda: evaluate_policies(data, [runs[0]], options=on, policies=["none", "hflip"], search=None),
        "fit_postprocess": lambda: fit_postprocess(runs[0], data, options=on),
        "oof": lambda: oof(runs, tmp_path / "oof.csv", options=on),
    }
    images = {"predict": 2, "tta": 2, "fit_postprocess": 2, "oof": 4}
    policies = {"tta": 2}
    for job, run in jobs.items():
        calls.clear()
        run()
        predicted = images[job] * policies.get(job, 1)
        assert sorted(set(calls)) == [
            ("after", "boneseg.inference.pipeline"),
            ("before", "boneseg.inference.pipeline"),
            ("plan", "boneseg.inference.pipeline"),
            ("predict", "boneseg.inference.pipeline"),
        ], job
        count = {name: sum(c[0] == name for c in calls) for name in ("plan", "before", "after", "predict")}
        folds = 2 if job == "oof" else 1
        assert count == {"plan": folds, "before": images[job], "after": predicted, "predict": predicted}, job


def test_the_stream_loop_has_one_home():
    """The loader over images, the per-image stage calls and the predictor's per-image call live in
    `boneseg.inference.pipeline` only."""
    import ast
    from pathlib import Path

    import boneseg

    root = Path(boneseg.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                receiver = ast.unparse(f.value) if isinstance(f, ast.Attribute) else ""
                if (
                    name == "ImageDataset"
                    or (name in ("before", "after") and "stages" in receiver)
                    or (name == "predict" and "predictor" in receiver)
                ):
                    found.append((rel, name))
    assert {rel for rel, _ in found} == {"inference/pipeline.py"}, found
