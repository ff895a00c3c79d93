"""`boneseg pseudo`: predictions -> polygon labels in the train layout, confidence filtering, and the
`pseudo` -> `train --pseudo` pair."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from boneseg import probs
from boneseg.classes import CLASSES
from boneseg.cli import app
from boneseg.data.layout import discover
from boneseg.data.masks import build_sample, load_label, rasterize
from boneseg.data.synth import render_hand
from boneseg.errors import DataError, OutputExistsError, UsageError
from boneseg.metrics import dice
from boneseg.submission import SubmissionWriter
from boneseg.workflows.pseudo import MANIFEST, make_pseudo, trace_polygon

SIZE = 256


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    """DATA with four phantom test images (two patients) and their bone masks as 'predictions'."""
    root = tmp_path_factory.mktemp("pseudo") / "data"
    rng = np.random.default_rng(3)
    names, masks = [], []
    for i in range(4):
        image, polygons, _ = render_hand(rng, SIZE)
        name = f"ID{10 + i // 2:03d}/image{1661319000000 + i}.png"
        path = root / "test" / "DCM" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
        m = rasterize(polygons, (SIZE, SIZE)).copy()
        m[CLASSES.index("Radius"), 2:4, 2:4] = True  # a stray fragment, as predictions have
        names.append(name)
        masks.append(m)
    return root, names, np.stack(masks)


def write_sub(path, names, masks):
    with SubmissionWriter(path) as w:
        for name, m in zip(names, masks):
            w.write_masks(os.path.basename(name), m)
    return path


def test_trace_polygon_keeps_the_largest_component():
    mask = np.zeros((20, 30), bool)
    mask[0:12, 20:30] = True  # touches the top and right borders
    mask[15:17, 2:4] = True  # a smaller fragment, dropped
    pts = trace_polygon(mask)
    assert pts.dtype == np.int32 and pts.shape[1] == 2
    refill = rasterize({"Radius": pts}, mask.shape)[CLASSES.index("Radius")]
    expected = np.zeros_like(mask)
    expected[0:12, 20:30] = True
    np.testing.assert_array_equal(refill, expected)
    assert trace_polygon(np.zeros((5, 5), bool)) is None
    line = np.zeros((5, 9), bool)
    line[2, 1:8] = True
    assert trace_polygon(line) is None  # a 1-pixel line makes no polygon


def test_round_trip_from_a_submission(test_set, tmp_path):
    root, names, masks = test_set
    masks = masks.copy()
    masks[3, CLASSES.index("Pisiform")] = False  # an image missing a class is left out
    sub = write_sub(tmp_path / "sub.csv", names[1:], masks[1:])  # names[0] has no prediction
    summary = make_pseudo(sub, root, tmp_path / "pseudo", workers=2)
    out = tmp_path / "pseudo"

    samples = discover(out)  # the plain train layout: no special case for pseudo data
    assert [s.name for s in samples] == names[1:3]
    for s, m in zip(samples, masks[1:3]):
        doc = json.loads(s.label.read_text())
        assert doc["filename"] == s.image_name and len(doc["annotations"]) == len(CLASSES)
        ann = doc["annotations"][0]
        assert set(ann) == {"id", "type", "attributes", "points", "label"} and ann["type"] == "poly_seg"
        label = load_label(s.label, (SIZE, SIZE))
        assert not label.problems
        scores = dice(rasterize(label.polygons, (SIZE, SIZE)), m)
        assert scores.min() >= 0.97 and scores.mean() >= 0.99
        assert os.path.samefile(s.image, root / "test" / "DCM" / s.name)  # hard-linked
        cached = build_sample(s)  # what training reads
        assert cached.masks.shape == (len(CLASSES), SIZE, SIZE) and cached.side in ("L", "R")

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["source_kind"] == "csv" and manifest["summary"]["written"] == 2
    assert manifest["summary"]["refill_dice_min"] >= 0.97
    assert [r["image"] for r in manifest["images"]] == names[1:3]
    assert manifest["images"][0]["image_file"] == "hardlink" and manifest["images"][0]["confidence"] is None
    left = {r["image"]: r for r in manifest["left_out"]}
    assert left[names[0]]["reason"] == "no prediction in the source"
    assert left[names[3]]["classes"] == ["Pisiform"] and "not predicted" in left[names[3]]["reason"]
    assert summary.left_out == manifest["left_out"]


def write_probs(folder, names, masks, conf):
    """Probabilities `conf[i, c]` inside each mask, 0.1 outside."""
    qs = []
    for name, m, cf in zip(names, masks, conf):
        q = np.where(m, probs.quantize(cf)[:, None, None], probs.quantize(0.1)).astype(np.uint8)
        probs.save(folder, os.path.basename(name), q)
        qs.append(q)
    probs.write_manifest(folder, [os.path.basename(n) for n in names], ["test"])
    return folder


def test_confidence_filter_from_probabilities(test_set, tmp_path):
    root, names, masks = test_set
    conf = np.full((len(names), len(CLASSES)), 0.95)
    conf[1, CLASSES.index("Lunate")] = 0.6
    conf[2, :3] = 0.7
    folder = write_probs(tmp_path / "probs", names, masks, conf)
    summary = make_pseudo(folder, root, tmp_path / "p", min_confidence=0.8, workers=1)
    assert [r["image"] for r in summary.written] == [names[0], names[3]]
    assert summary.written[0]["confidence"] == pytest.approx(0.95, abs=0.003)
    left = {r["image"]: r for r in summary.left_out}
    assert left[names[1]]["classes"] == ["Lunate"] and left[names[1]]["reason"].startswith("confidence 0.600 < 0.8")
    assert left[names[2]]["classes"] == ["finger-1", "finger-2", "finger-3"]
    label = load_label(tmp_path / "p" / "train" / "outputs_json" / names[3].replace(".png", ".json"))
    assert dice(rasterize(label.polygons, (SIZE, SIZE)), masks[3]).min() >= 0.97

    everything = make_pseudo(folder, root, tmp_path / "all", workers=1)  # no filter: all four written
    assert len(everything.written) == 4 and not everything.left_out
    assert everything.manifest["source_kind"] == "probs" and everything.manifest["threshold"][0] == 0.5


def test_agreement_filter_with_other_predictions(test_set, tmp_path):
    root, names, masks = test_set
    sub = write_sub(tmp_path / "a.csv", names, masks)
    other = masks.copy()
    other[1, CLASSES.index("Capitate")] = np.roll(other[1, CLASSES.index("Capitate")], 6, axis=1)  # disagrees
    second = write_sub(tmp_path / "b.csv", names, other)
    third = write_probs(tmp_path / "probs", names[:3], masks[:3], np.full((3, len(CLASSES)), 0.9))  # lacks names[3]
    summary = make_pseudo(sub, root, tmp_path / "p", agree_with=[second], min_agreement=0.9, workers=1)
    assert [r["image"] for r in summary.written] == [names[0], names[2], names[3]]
    assert all(r["agreement"] == 1.0 for r in summary.written)
    left = summary.left_out[0]
    assert left["image"] == names[1] and left["classes"] == ["Capitate"] and left["reason"].startswith("agreement 0.")
    agreement = float(dice(other[1, CLASSES.index("Capitate")], masks[1, CLASSES.index("Capitate")]))
    assert f"agreement {agreement:.3f} < 0.9" in left["reason"]
    assert summary.manifest["min_agreement"] == 0.9 and len(summary.manifest["agree_with"]) == 1

    # no minimum: everything written, each with its weakest agreement (mean over the other inputs)
    both = make_pseudo(sub, root, tmp_path / "q", agree_with=[second, third], workers=1)
    assert [r["image"] for r in both.written] == names[:3]
    assert both.written[1]["agreement"] == pytest.approx((1 + agreement) / 2, abs=1e-5)
    assert both.written[1]["least_agreed_class"] == "Capitate"
    assert both.left_out == [{"image": names[3], "reason": "not predicted by probs"}]
    with pytest.raises(UsageError, match="--agree-with"):
        make_pseudo(sub, root, tmp_path / "r", min_agreement=0.5)
    res = CliRunner().invoke(
        app,
        [
            "pseudo",
            str(sub),
            str(root),
            "-o",
            str(tmp_path / "cli"),
            "--agree-with",
            str(second),
            "--min-agreement",
            "0.9",
            "--workers",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"] == 3


def test_every_image_left_out_is_an_empty_train_layout(test_set, tmp_path):
    """Nothing confident enough: the folder still has the train layout, so the reader of ``train --pseudo``
    and ``eda`` says that it holds no images (not that it is not a dataset)."""
    root, names, masks = test_set
    folder = write_probs(tmp_path / "probs", names, masks, np.full((len(names), len(CLASSES)), 0.9))
    summary = make_pseudo(folder, root, tmp_path / "p", min_confidence=0.95, workers=1)
    assert not summary.written and len(summary.left_out) == len(names)
    with pytest.raises(DataError, match=r"p/train/DCM: no PNG images found"):
        discover(tmp_path / "p")


def test_errors_and_overwrite_rules(test_set, tmp_path):
    root, names, masks = test_set
    sub = write_sub(tmp_path / "sub.csv", names, masks)
    with pytest.raises(UsageError, match="--min-confidence needs a probability folder"):
        make_pseudo(sub, root, tmp_path / "o", min_confidence=0.5)
    stranger = write_sub(tmp_path / "stranger.csv", names[:1] + ["ID099/image1.png"], masks[:2])
    with pytest.raises(DataError, match=r"stranger.csv: predicts image 'image1.png' that .* lacks"):
        make_pseudo(stranger, root, tmp_path / "o")
    text = sub.read_text().replace(
        f"{os.path.basename(names[2])},Capitate,", f"{os.path.basename(names[2])},Capitate,9 x "
    )
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(
        DataError, match=rf"bad.csv: image '{os.path.basename(names[2])}', class 'Capitate': malformed RLE"
    ):
        make_pseudo(tmp_path / "bad.csv", root, tmp_path / "o", workers=1)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))  # staging cleaned up

    make_pseudo(sub, root, tmp_path / "o", workers=1)
    with pytest.raises(OutputExistsError):
        make_pseudo(sub, root, tmp_path / "o", workers=1)
    again = make_pseudo(
        write_sub(tmp_path / "two.csv", names[:2], masks[:2]), root, tmp_path / "o", workers=1, force=True
    )
    assert len(again.written) == 2 and len(discover(tmp_path / "o")) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a pseudo-label folder"):
        make_pseudo(sub, root, tmp_path / "mine", force=True)


def test_cli_json(test_set, tmp_path):
    root, names, masks = test_set
    sub = write_sub(tmp_path / "sub.csv", names, masks)
    res = CliRunner().invoke(
        app, ["pseudo", str(sub), str(root), "-o", str(tmp_path / "ps"), "--copy", "--workers", "1", "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["written"] == 4 and doc["left_out"] == [] and doc["refill_dice_min"] >= 0.97
    s = discover(tmp_path / "ps")[0]
    assert not os.path.samefile(s.image, root / "test" / "DCM" / s.name)  # --copy


def test_pseudo_then_train_mixes_them_in(synth_data, tmp_path):
    """`boneseg pseudo` output is training data for `boneseg train DATA --pseudo PSEUDO` (real CLI, tiny model)."""
    train_s, test_s = discover(synth_data), discover(synth_data, "test", labels=False)
    with SubmissionWriter(tmp_path / "sub.csv") as w:  # stand-in predictions: labels of train images
        for s, t in zip(test_s, train_s):
            w.write_masks(s.image_name, build_sample(t).masks)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "pseudo",
            str(tmp_path / "sub.csv"),
            str(synth_data),
            "-o",
            str(tmp_path / "pseudo"),
            "--workers",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"] == len(test_s)
    res = runner.invoke(
        app,
        [
            "train",
            str(synth_data),
            "--pseudo",
            str(tmp_path / "pseudo"),
            "--arch",
            "unet",
            "--encoder",
            "resnet18",
            "--encoder-weights",
            "none",
            "--size",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--workers",
            "0",
            "-o",
            str(tmp_path / "run"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert summary["epochs_done"] == 1
    assert summary["train_images"] == len(train_s) - summary["val_images"] + len(test_s)  # pseudo images mixed in
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pseudo"] == [str(tmp_path / "pseudo")]


def test_a_wrist_model_reads_pseudo_labels_as_wrist_crops(synth_data, tmp_path):
    """``train --wrist --pseudo``: the pseudo images are cut to their wrist box like the training images."""
    from util import tiny_config

    from boneseg.engine.train import train

    train_s, test_s = discover(synth_data), discover(synth_data, "test", labels=False)
    with SubmissionWriter(tmp_path / "sub.csv") as w:  # stand-in predictions: labels of train images
        for s, t in zip(test_s, train_s):
            w.write_masks(s.image_name, build_sample(t).masks)
    make_pseudo(tmp_path / "sub.csv", synth_data, tmp_path / "pseudo", workers=1)
    cache = tmp_path / "cache"
    cfg = tiny_config(synth_data, tmp_path / "run", cache_dir=str(cache), wrist=True, max_steps=1)
    train({**cfg, "pseudo": [str(tmp_path / "pseudo")]})
    stems = sorted(s.name.replace("/", "__")[:-4] + "@64.npz" for s in discover(tmp_path / "pseudo"))
    assert sorted(p.name for p in (cache / "pseudo-0" / "wrist-m0.15").glob("*.npz")) == stems
    assert not list((cache / "pseudo-0").glob("*.npz"))  # never served as whole images
