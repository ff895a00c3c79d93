"""`boneseg.inference.pipeline`: the options object and the image stream."""

from __future__ import annotations

import pytest
from util import write_dataset

from boneseg.data.layout import discover
from boneseg.errors import UsageError
from boneseg.inference import ImageStream, Policy, PredictOptions, Predictor
from boneseg.progress import Reporter, Task


def test_options_are_checked_before_anything_is_read(tmp_path):
    missing = [tmp_path / "no-such-run"]  # never opened: the options fail first
    for options, option in (
        (PredictOptions(batch_size=0), "--batch-size"),
        (PredictOptions(overlap=1.0), "--overlap"),
        (PredictOptions(workers=-1), "--workers"),
        (PredictOptions(weights=[1.0, 2.0]), "--weights"),
    ):
        with pytest.raises(UsageError, match=option):
            options.check(missing)


def test_uncalibrated_jobs_refuse_a_calibration_file(tmp_path):
    from boneseg.workflows.oof import oof
    from boneseg.workflows.validation import fit_postprocess

    assert PredictOptions().uncalibrated("x").calibration == "none"
    assert PredictOptions(calibration="none").uncalibrated("x") == PredictOptions(calibration="none")
    cal = PredictOptions(calibration=tmp_path / "cal.json")
    with pytest.raises(UsageError, match="--calibration .*cal.json: not applied here"):
        oof([tmp_path / "run0"], tmp_path / "oof.csv", options=cal)
    with pytest.raises(UsageError, match="--calibration .*cal.json: not applied here"):
        fit_postprocess(tmp_path / "run0", tmp_path, options=cal)
    with pytest.raises(UsageError, match="weights"):
        oof([tmp_path / "run0"], tmp_path / "oof.csv", options=PredictOptions(weights=[1.0]))


class _Counting(Reporter):
    def __init__(self):
        self.done = 0

    def task(self, description, total, unit="it", done=0):
        reporter = self

        class _T(Task):
            def advance(self, n=1):
                reporter.done += n

        return _T()


def test_the_stream_hands_out_images_in_order_with_labels(tmp_path):
    """Samples in their order, ground truth with `labels`, FiLM-free stages entered and left, one progress
    step per image; probabilities at the image's size."""
    import torch

    from boneseg.modelling.models import build_model
    from boneseg.runs.checkpoint import save_checkpoint

    config = {"arch": "unet", "encoder": "resnet18", "size": 64, "in_channels": 1, "channels": "gray"}
    torch.manual_seed(0)
    state = {"config": config, "model": build_model(config).state_dict(), "epoch": 0, "step": 0, "metrics": {}}
    save_checkpoint(tmp_path / "m.pt", state)
    data = write_dataset(tmp_path / "data", patients=1, size=64, test_patients=0)
    samples = discover(data)
    on = PredictOptions(device="cpu", workers=0)
    predictor = on.predictor([tmp_path / "m.pt"])
    assert isinstance(predictor, Predictor) and on.predictor(predictor) is predictor
    policy, counted = Policy.parse("hflip"), _Counting()
    with ImageStream(
        samples, predictor, on.stages(predictor, data), [policy], workers=0, labels=True, reporter=counted
    ) as stream:
        names = []
        for image in stream:
            assert image.item.masks is not None and tuple(image.item.masks.shape) == (29, 64, 64)
            assert tuple(image.probabilities(policy).shape) == (29, 64, 64) and image.seconds >= 0
            names.append(image.sample.image_name)
    assert names == [s.image_name for s in samples] and counted.done == len(samples)
