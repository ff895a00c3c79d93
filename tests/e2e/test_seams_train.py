"""The seams of a training run: what a run is (vs. one invocation), resume, non-finite values, empty folds,
config values reaching their objects, nothing half-written, and the W&B run a resume continues."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from util import error_line, fake_wandb, tiny_config, write_dataset

from boneseg.cli import main
from boneseg.engine.train import NonFiniteLoss, train
from boneseg.runs.config import RUNTIME

OPTS = [
    "--arch",
    "unet",
    "--encoder",
    "resnet18",
    "--size",
    "64",
    "--batch-size",
    "2",
    "--encoder-weights",
    "none",
    "--aug",
    "light",
    "--folds",
    "2",
    "--seed",
    "1",
    "--lr",
    "3e-3",
]
RUNTIME_OPTS = ["--workers", "0", "--device", "cpu"]


def cli(capsys, *args) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


@pytest.fixture()
def data(tmp_path):
    """8 labelled images of 4 patients (2 folds: 4 train images = 2 steps per epoch at batch 2)."""
    return write_dataset(tmp_path / "data", patients=4, size=64)


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        sa, sb = _state(a / name), _state(b / name)
        assert (sa["epoch"], sa["step"]) == (sb["epoch"], sb["step"])
        for k in sa["model"]:
            assert torch.equal(sa["model"][k], sb["model"][k]), f"{name}: {k} differs"
    metrics = [
        [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()
        ]
        for run in (a, b)
    ]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 3


# -- 1. options of one invocation never become part of the run ------------------------------------------


def test_resume_short_and_long_form_finish_the_schedule(data, tmp_path, capsys):
    ref = tmp_path / "ref"
    assert cli(capsys, "train", data, *OPTS, *RUNTIME_OPTS, "--epochs", "3", "--out", ref)[0] == 0
    config = json.loads((ref / "config.json").read_text())
    assert not set(RUNTIME) & set(config) and not set(RUNTIME) & set(_state(ref / "last.pt")["config"])
    assert config["epochs"] == 3 and config["data"] == str(data)

    for form, run in (("short", tmp_path / "short"), ("long", tmp_path / "long")):
        code, _ = cli(capsys, "train", data, *OPTS, *RUNTIME_OPTS, "--epochs", "3", "--max-steps", "1", "--out", run)
        assert code == 0 and _state(run / "last.pt")["step"] == 1  # mid-first-epoch
        if form == "short":  # an old checkpoint that still holds runtime options: they are ignored
            state = _state(run / "last.pt")
            state["config"].update(max_steps=1, workers=0, device="cpu", save_every=5, cache_dir=str(tmp_path))
            torch.save(state, run / "last.pt")
            resume = ["train", data, "--out", run, "--resume", *RUNTIME_OPTS]
        else:
            resume = ["train", data, *OPTS, *RUNTIME_OPTS, "--epochs", "3", "--out", run, "--resume"]
        assert cli(capsys, *resume, "--max-steps", "3")[0] == 0  # steps continue past the first stop
        assert _state(run / "last.pt")["step"] == 3
        assert cli(capsys, *resume)[0] == 0
        assert _state(run / "last.pt")["step"] == 6
        _assert_same_run(ref, run)


# -- 2. non-finite values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        "--lr",
        "--weight-decay",
        "--warmup",
        "--clip",
        "--ema",
        "--meta-weight",
        "--boundary-head",
        "--boundary-sharpen",
        "--wrist-margin",
        "--dist-timeout",
    ],
)
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_float_options_are_refused(data, tmp_path, capsys, option, value):
    run = tmp_path / "run"
    code, err = cli(capsys, "train", data, *OPTS, *RUNTIME_OPTS, "--epochs", "1", option, value, "--out", run)
    assert code == 2 and error_line(err).startswith(f"Error: {option} {value}: must be a finite number")
    assert not run.exists()


@pytest.mark.parametrize(
    "option, culprit",
    [
        (["--scheduler", "onecycle"], "--scheduler 'onecycle': unknown schedule; did you mean 'cosine'?"),
        (["--optimizer", "adam"], "--optimizer 'adam': unknown optimizer; did you mean 'adamw'?"),
        (["--warmup", "2"], "--warmup 2: must be shorter than --epochs 2"),
    ],
)
def test_schedule_options_are_checked_before_anything(data, tmp_path, capsys, option, culprit):
    """Checked with the other options: a dry run said these were fine (and a run found out after caching
    the masks); a warm-up as long as the run never reached --lr nor started its schedule."""
    for dry in (["--dry-run"], []):
        run = tmp_path / "run"
        code, err = cli(capsys, "train", data, *OPTS, *RUNTIME_OPTS, "--epochs", "2", *option, *dry, "--out", run)
        assert code == 2 and error_line(err).startswith(f"Error: {culprit}"), err
        assert not run.exists() and not (data / ".boneseg-cache").exists()


def test_a_batch_larger_than_the_training_images_is_said(data, tmp_path, capsys):
    """4 training images and --batch-size 8: each step takes the 4 (not refused, not silent)."""
    code, err = cli(
        capsys, "train", data, *OPTS, *RUNTIME_OPTS, "--batch-size", "8", "--dry-run", "--out", tmp_path / "r"
    )
    assert code == 0 and "Warning: --batch-size 8: only 4 training image(s) per epoch, so each step takes 4" in err
    code, err = cli(
        capsys, "train", data, *OPTS, *RUNTIME_OPTS, "--batch-size", "4", "--dry-run", "--out", tmp_path / "r"
    )
    assert code == 0 and "Warning" not in err


def _nan_loss_from(monkeypatch, step: int) -> None:
    """Make the training loss NaN from the `step`-th training forward on (validation is untouched)."""
    import boneseg.engine.train as engine

    real, calls = engine.build_criterion, []

    def build(cfg):
        criterion = real(cfg)
        forward = criterion.forward

        def nan_after(*args, **kw):
            loss = forward(*args, **kw)
            if torch.is_grad_enabled():
                calls.append(1)
                if len(calls) >= step:
                    return loss * float("nan")
            return loss

        criterion.forward = nan_after
        return criterion

    monkeypatch.setattr(engine, "build_criterion", build)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    _nan_loss_from(monkeypatch, 4)  # step 4 = the 2nd step of epoch 2
    code, err = cli(capsys, "train", data, *OPTS, *RUNTIME_OPTS, "--epochs", "3", "--out", run)
    assert code == 1 and "non-finite" in error_line(err) and "step 4 (epoch 2)" in err
    assert "last.pt keeps the last good state" in err
    last, best = _state(run / "last.pt"), _state(run / "best.pt")
    assert (last["epoch"], last["step"], best["epoch"]) == (1, 2, 1)
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_non_finite_loss_before_any_checkpoint_leaves_nothing(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _nan_loss_from(monkeypatch, 1)
    with pytest.raises(NonFiniteLoss, match="step 1 .*no last.pt was written"):
        train(tiny_config(data, run, folds=2, epochs=2))
    assert not run.exists()


# -- 3. an empty validation fold -------------------------------------------------------------------------


def test_empty_validation_fold_is_refused_before_writing(data, tmp_path, capsys):
    from boneseg.data.layout import discover

    splits = tmp_path / "splits.json"
    samples = discover(data)
    splits.write_text(
        json.dumps(
            {"folds": 3, "group_by": "patient", "assignments": {s.name: int(s.patient[-1]) % 2 for s in samples}}
        )
    )  # fold 2 gets nothing
    run = tmp_path / "run"
    code, err = cli(
        capsys, "train", data, *OPTS, *RUNTIME_OPTS, "--epochs", "1", "--splits", splits, "--fold", "2", "--out", run
    )
    assert code == 1 and error_line(err) == (
        f"Error: --splits {splits}: fold 2 has no images (nothing to "
        "validate on; choose another --fold or run boneseg split again)"
    )
    assert not run.exists()


# -- 4. every config value reaches the object it configures ---------------------------------------------


def test_config_values_reach_losses_and_heads(data, tmp_path, monkeypatch):
    from boneseg.data.masks import decode_distance
    from boneseg.modelling import heads, losses
    from boneseg.runs.checkpoint import load_model

    seen = {}
    real_forward, real_aux = losses.DistanceBCE.forward, heads.aux_loss

    def forward(self, logits, target, dist=None):
        seen["clip"], seen["max_dist"] = self.clip, decode_distance(dist, 127).abs().max().item()
        return real_forward(self, logits, target, dist)

    def aux_loss(out, batch, target, config):
        seen["meta_weight"], seen["boundary_head"] = config.meta_weight, config.boundary_head
        return real_aux(out, batch, target, config)

    monkeypatch.setattr(losses.DistanceBCE, "forward", forward)
    monkeypatch.setattr(heads, "aux_loss", aux_loss)
    rows = "".join(f"ID{p:03d},{40 + p},{'MF'[p % 2]},170,70\n" for p in range(1, 5))
    (data / "meta_data.csv").write_text("ID,age,sex,height,weight\n" + rows)  # --meta aux needs metadata
    run = tmp_path / "run"
    train(
        tiny_config(
            data,
            run,
            folds=2,
            aug="none",
            loss="bce+dtbce",
            distance_clip=5,
            meta="aux",
            meta_weight=0.37,
            boundary_head=0.55,
            boundary_sharpen=0.25,
            max_steps=1,
        )
    )
    assert seen == {"clip": 5, "max_dist": 5, "meta_weight": 0.37, "boundary_head": 0.55}
    model, config = load_model(run)
    assert (model.sharpen, model.meta_mode, config["distance_clip"]) == (0.25, "aux", 5)


def test_resume_of_a_finished_run_with_a_new_boundary_sharpen_reaches_predict(data, tmp_path):
    """--boundary-sharpen given to a resume is written into best.pt and last.pt as well as config.json:
    predict (which reads the checkpoint) uses the new value, not the one the run started with."""
    from boneseg.runs.checkpoint import load_checkpoint, load_model

    run = tmp_path / "run"
    opts = {"folds": 2, "aug": "none", "boundary_head": 0.5}
    train(tiny_config(data, run, boundary_sharpen=0.25, **opts))
    summary = train({"out": str(run), "resume": True, "boundary_sharpen": 0.0, "workers": 0, "device": "cpu"})
    assert summary["steps"] == load_checkpoint(run / "last.pt")["step"]  # finished: nothing trained
    assert load_model(run)[0].sharpen == 0.0
    assert [load_checkpoint(run / n)["config"]["boundary_sharpen"] for n in ("best.pt", "last.pt")] == [0.0, 0.0]
    assert json.loads((run / "config.json").read_text())["boundary_sharpen"] == 0.0


# -- 5. nothing half-written ---------------------------------------------------------------------------


def test_stale_temp_files_are_cleaned_and_do_not_block_a_new_run(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.k9x2.tmp").write_bytes(b"half a checkpoint")  # what a kill -9 mid-save leaves
    base = ["train", data, *OPTS, *RUNTIME_OPTS, "--epochs", "2", "--out", run]
    assert cli(capsys, *base, "--max-steps", "1")[0] == 0
    assert not list(run.glob(".*.tmp"))
    for flag in ("--resume", "--force"):
        (run / ".last.pt.a1b2.tmp").write_bytes(b"x")
        (run / ".metrics.jsonl.c3d4.tmp").write_bytes(b"x")
        assert cli(capsys, *base, "--max-steps", "1", flag)[0] == 0
        assert not list(run.glob(".*.tmp")), flag


def test_a_run_failing_at_start_leaves_the_folder_as_it_found_it(data, tmp_path, capsys):
    run = tmp_path / "runs" / "a"
    # batch 1 through DeepLabV3+'s image pooling: BatchNorm fails at the first training step
    bad = ["train", data, *OPTS, *RUNTIME_OPTS, "--arch", "deeplabv3plus", "--epochs", "1", "--out", run]
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    code, err = cli(capsys, *bad, "--batch-size", "1")
    assert code == 1 and error_line(err)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    (run / "notes.txt").unlink()
    run.rmdir()
    assert cli(capsys, *bad, "--batch-size", "1")[0] == 1
    assert not run.exists()
    assert cli(capsys, *bad, "--max-steps", "1")[0] == 0  # the plain retry, no --force


# -- 6. W&B: a resume continues the run's own W&B run --------------------------------------------------


def test_wandb_resume_continues_the_same_run(data, tmp_path, monkeypatch):
    mod = fake_wandb("k" * 40)
    monkeypatch.setitem(sys.modules, "wandb", mod)
    run = tmp_path / "run"
    cfg = tiny_config(data, run, folds=2, epochs=2, log="wandb", log_images=0)
    train({**cfg, "max_steps": 1})
    train({**cfg, "resume": True})
    first, second = mod.runs
    assert first.kwargs["id"] is None and first.finished
    assert second.kwargs["id"] == first.id and second.kwargs["resume"] == "allow"
