"""`boneseg export`: trained runs -> a deployable model with a sidecar of everything `predict` needs.

``onnx`` and ``torchscript`` hold the runs' networks in one graph that outputs their (weighted) mean sigmoid
probabilities at a requested output size (each run's logits resized before its sigmoid, as `predict` does), with
dynamic batch and spatial axes; ``hf`` is a folder that segmentation_models_pytorch's
``from_pretrained`` loads (safetensors weights, smp's ``config.json``, a model card). The sidecar format and
the runtime are in `boneseg.inference.exported`. Each export is checked before it is published: the exported
model's probabilities on a random input must match torch's within `TOLERANCE`.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from boneseg import __version__
from boneseg import calibration as calibration_mod
from boneseg import probs as probs_mod
from boneseg.classes import CLASSES
from boneseg.data.transforms import in_channels
from boneseg.errors import CheckpointError, UsageError
from boneseg.inference.exported import (
    CONFIG_KEYS,
    FORMAT,
    FORMATS,
    HASH_KEY,
    HF_SIDECAR,
    INPUT_NAME,
    OUTPUT_NAME,
    SIZE_NAME,
    VERSION,
    integrity,
    load_backend,
    sidecar_path,
    size_input,
)
from boneseg.inference.predictor import check_weights
from boneseg.inference.run import find_rules
from boneseg.io import check_output, disk_full, hold, is_stdout, publishing, write_json
from boneseg.postprocess import rules_list
from boneseg.probs import read_thresholds
from boneseg.progress import SILENT, Reporter
from boneseg.runs.run import Run

TOLERANCE = 1e-4
"""Largest difference allowed between the exported model's probabilities and torch's."""
SIZE_DOC = {
    "name": SIZE_NAME,
    "layout": "int64 [height, width]",
    "meaning": "size of the probabilities: each network's logits are resized bilinearly (half-pixel centres) "
    "to it before the sigmoid; give the input's own size for no resize",
}


@dataclass
class ExportSummary:
    """What an `export` call wrote."""

    output: str
    sidecar: str
    format: str
    models: int
    max_abs_diff: float  # exported vs torch probabilities on a random input


class Probabilities(torch.nn.Module):
    """Several networks as one: the weighted mean (weights sum to 1) of their sigmoid probabilities at
    ``output_size`` (int64 ``[height, width]``): each network's logits are resized bilinearly (half-pixel
    centres) before its sigmoid, exactly as `predict` treats a checkpoint in resize mode."""

    def __init__(self, models: Sequence[torch.nn.Module], weights: Sequence[float]):
        super().__init__()
        self.nets = torch.nn.ModuleList(models)
        total = sum(weights)
        self.weights = [float(w) / total for w in weights]

    def forward(self, image: torch.Tensor, output_size: torch.Tensor) -> torch.Tensor:
        size: Any = (output_size[0], output_size[1])  # tensors: the traced graph keeps the size an input
        out = torch.zeros(())
        for net, w in zip(self.nets, self.weights):
            logits = F.interpolate(net(image).float(), size=size, mode="bilinear", align_corners=False)
            out = out + torch.sigmoid(logits) * w
        return out


def check_exportable(run: Run, fmt: str) -> None:
    """Refuse what an image-in, masks-out export cannot hold.

    Raises:
        UsageError: a FiLM model (it needs patient metadata), a wrist second-stage model, other classes, or
            (``hf``) a boundary-sharpened model, a SAM2-UNet or a ``--norm group|instance`` one (smp's
            ``from_pretrained`` rebuilds a plain smp model only).
    """
    cfg = run.config
    if "film" in (cfg.meta or ""):
        raise UsageError(
            f"{run.path}: a FiLM model (--meta {cfg.meta}) needs patient metadata as a second input; "
            "export takes image-only models (predict it from its checkpoint with --meta)"
        )
    if cfg.wrist or run.classes != tuple(CLASSES):
        raise UsageError(
            f"{run.path}: a wrist second-stage model (its own crops and classes) cannot be exported; "
            "export the first stage and give this checkpoint to predict --wrist-model"
        )
    if fmt == "hf" and (cfg.arch == "sam2unet" or (cfg.norm or "batch") != "batch"):
        what = "a SAM2-UNet" if cfg.arch == "sam2unet" else f"a model with --norm {cfg.norm}"
        raise UsageError(
            f"{run.path}: {what} is not a plain smp model (smp's from_pretrained would rebuild another network); "
            "export it with --format onnx or torchscript"
        )
    if fmt == "hf" and cfg.boundary_head > 0 and cfg.boundary_sharpen > 0:
        raise UsageError(
            f"{run.path}: a boundary-sharpened model (--boundary-sharpen) is not a plain smp model; "
            "export it with --format onnx or torchscript"
        )


def check_agree(runs: Sequence[Run], fmt: str) -> None:
    """Runs in one graph share one input: the same channels, normalisation, sizes and hand side.

    Raises:
        UsageError: several runs for ``hf``, or runs that differ in one of those settings (naming it).
    """
    if fmt == "hf" and len(runs) > 1:
        raise UsageError(
            "--format hf holds one smp model: export one run (or use --format onnx|torchscript "
            "for an ensemble in one graph)"
        )
    first = runs[0]
    for run in runs[1:]:
        for key in CONFIG_KEYS:
            if getattr(run.config, key) != getattr(first.config, key):
                raise UsageError(
                    f"{run.path}: {key} {getattr(run.config, key)!r} differs from {first.path}'s "
                    f"{getattr(first.config, key)!r} (runs in one graph share one input)"
                )


def _plain(model: torch.nn.Module) -> Any:
    """The smp model inside a heads wrapper (whose eval output, without sharpening, is the smp model's)."""
    return getattr(model, "base", model)


def _cases(config, n: int = 1) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """Random normalised inputs with output sizes: the training window at its own size, the same upsampled
    to a non-square size (resize mode), and one wider input (to check the dynamic axes)."""
    side = config.crop or config.size
    gen = torch.Generator().manual_seed(0)
    c = in_channels(config)
    x = torch.randn(n, c, side, side, generator=gen)
    wide = torch.randn(n, c, side, side + 32, generator=gen)
    return [(x, (side, side)), (x, (2 * side + 7, 3 * side)), (wide, (side, side + 32))]


def _max_diff(reference, exported, cases: Sequence[tuple[torch.Tensor, tuple[int, int]]]) -> float:
    """The largest difference between `exported` and `reference` probabilities (both called as
    ``f(image, (height, width))``) over `cases` (inputs `reference` itself refuses are skipped)."""
    worst = 0.0
    with torch.no_grad():
        for x, size in cases:
            try:
                want = reference(x, size)
            except Exception:  # noqa: BLE001 - a fixed-size encoder refuses other sizes; nothing to compare
                continue
            worst = max(worst, float((exported(x, size) - want).abs().max()))
    return worst


def _write_graph(graph: torch.nn.Module, fmt: str, path: Path, sample: torch.Tensor, shown: Path) -> None:
    """Write `graph` as `fmt` to `path` (the temp file of output `shown`).

    Raises:
        DataError: the disk is full. UsageError: the exporter cannot handle this model.
    """
    args = (sample, size_input((sample.shape[-2] * 2, sample.shape[-1] * 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        try:
            if fmt == "onnx":
                axes = {0: "batch", 2: "height", 3: "width"}
                torch.onnx.export(
                    graph,
                    args,
                    str(path),
                    dynamo=False,
                    input_names=[INPUT_NAME, SIZE_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}},
                    opset_version=17,
                )
            else:
                buffer = io.BytesIO()  # torch.jit.save to a file aborts the process when the disk is full
                torch.jit.save(torch.jit.trace(graph, args, check_trace=False), buffer)
                with open(path, "wb") as fh:
                    fh.write(buffer.getbuffer())
        except Exception as exc:  # noqa: BLE001 - the exporters raise many types
            full = disk_full(shown, exc)
            if full is not None:
                raise full from None
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--format {fmt}: this model cannot be exported ({msg})") from None


def model_card(run: Run, sidecar: dict) -> str:
    """The README of an ``hf`` folder: classes, data, validation Dice per class, settings, how to load."""
    cfg, metrics = run.config, run.metrics
    per_class = metrics.get("val_dice_per_class") or {}
    dice = "\n".join(f"| {c} | {per_class[c]:.4f} |" for c in CLASSES if c in per_class) or "| (not recorded) | |"
    settings = {
        k: getattr(cfg, k)
        for k in (
            "arch",
            "encoder",
            "size",
            "crop",
            "channels",
            "mean",
            "std",
            "unify_side",
            "loss",
            "aug",
            "epochs",
            "fold",
            "splits",
        )
    }
    mean = f"{metrics['val_dice']:.4f}" if isinstance(metrics.get("val_dice"), (int, float)) else "not recorded"
    return "\n".join(
        [
            "---",
            "library_name: segmentation-models-pytorch",
            "tags: [segmentation, medical, x-ray, boneseg]",
            "---",
            "",
            f"# Hand-bone segmentation: {cfg.arch} / {cfg.encoder}",
            "",
            f"Exported by boneseg {__version__} from `{run.path}` (epoch {metrics.get('epoch', '?')}).",
            "",
            "## Classes",
            "",
            f"{len(CLASSES)} sigmoid channels, in this order (each its own mask; masks overlap):",
            "",
            ", ".join(CLASSES),
            "",
            "## Data",
            "",
            f"Trained on `{cfg.data}` (hand X-rays, PNG + polygon JSON), fold {cfg.fold} of "
            f"`{cfg.splits or 'the default split'}` held out for validation.",
            "",
            "## Validation Dice",
            "",
            f"Mean: {mean}",
            "",
            "| class | Dice |",
            "|---|---|",
            dice,
            "",
            "## Settings",
            "",
            "```json",
            json.dumps(settings, indent=2),
            "```",
            "",
            "Input: `(N, C, H, W)` float32, `x = (image / 255 - mean) / std` per channel (H, W multiples of 32); "
            "output: logits (apply a sigmoid). Thresholds and post-processing rules are in `boneseg.json`.",
            "",
            "## How to load",
            "",
            "```python",
            "import segmentation_models_pytorch as smp",
            'model = smp.from_pretrained("THIS_FOLDER").eval()',
            "```",
            "",
            "or predict with boneseg: `boneseg predict IMAGES -m THIS_FOLDER -o submission.csv`.",
            "",
        ]
    )


def export(
    runs: Sequence[str | os.PathLike | Run],
    fmt: str,
    output: str | os.PathLike,
    *,
    threshold: float | str | os.PathLike | dict | None = None,
    postprocess_rules: str | os.PathLike | None = "auto",
    calibration: str | os.PathLike | None = "auto",
    weights: Sequence[float] | None = None,
    force: bool = False,
    reporter: Reporter = SILENT,
) -> ExportSummary:
    """Export `runs` (checkpoints or run folders) as `fmt` (``onnx``, ``torchscript`` or ``hf``) to `output`.

    Args:
        threshold: per-class thresholds to carry (a number, ``{class: t}`` or a JSON file; default 0.5).
        postprocess_rules: ``auto`` (a single run's ``postprocess.json``), ``none`` or a rules file.
        calibration: ``auto`` (a single run's ``calibration.json``), ``none`` or a calibration file: the sidecar
            carries it and ``predict -m EXPORT`` applies it to the model's probabilities; its searched
            thresholds are carried when `threshold` is None.
        weights: ensemble weights, one per run (default equal).

    Raises:
        UsageError: a bad option, or a model that cannot be exported (FiLM, wrist, runs that disagree).
        OutputExistsError: an existing output or sidecar without `force`. CheckpointError: an unloadable run
        or an export that does not reproduce torch's probabilities.
    """
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if is_stdout(output):
        raise UsageError("--out -: an export is a model file (or folder) and its sidecar, not a stream; give a path")
    weights = check_weights(weights, len(runs))
    thresholds = read_thresholds(threshold)
    calibrated = calibration_mod.resolve(calibration)
    if fmt == "onnx":
        from boneseg.inference.exported import onnxruntime

        onnxruntime()
    out = Path(output)
    sidecar = out / HF_SIDECAR if fmt == "hf" else sidecar_path(out)
    check_output(out, force)
    if fmt != "hf":
        check_output(sidecar, force)
    opened = [Run.open(r) for r in runs]
    for run in opened:
        check_exportable(run, fmt)
    check_agree(opened, fmt)
    if str(calibration).lower() == "auto" and len(opened) == 1:
        calibrated = opened[0].calibration
    if threshold is None and calibrated is not None and calibrated.thresholds is not None:
        thresholds = calibrated.thresholds
    probs_mod.check_thresholds_calibration(threshold, calibrated is not None)
    rules, rules_path = find_rules(opened, postprocess_rules)
    if rules is not None:
        rules_list(rules, where=str(rules_path))  # checked now, not when predict reads the export
    cfg = opened[0].config
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "backend": fmt,
        "boneseg": __version__,
        "input": {"name": INPUT_NAME, "layout": "NCHW float32", "normalisation": "(image / 255 - mean) / std"},
        **({} if fmt == "hf" else {"output_size": SIZE_DOC}),
        "output": {"name": OUTPUT_NAME, "kind": "logits" if fmt == "hf" else "probabilities"},
        "classes": list(CLASSES),
        "in_channels": in_channels(cfg),
        **{k: getattr(cfg, k) for k in CONFIG_KEYS},
        "thresholds": {c: float(t) for c, t in zip(CLASSES, thresholds)},
        "postprocess": rules,
        "calibration": calibrated.document({"source": calibrated.source}) if calibrated is not None else None,
        "models": [
            {
                "source": str(r.path),
                "arch": r.config.arch,
                "encoder": r.config.encoder,
                "weight": w,
                "val_dice": r.metrics.get("val_dice"),
            }
            for r, w in zip(opened, weights)
        ],
    }
    with reporter.task(f"export {fmt}", 1) as task:
        nets = [r.model("cpu") for r in opened]
        # the model and its sidecar are one unit: both built beside their targets, checked, swapped in together
        with hold(out, *([] if fmt == "hf" else [sidecar])), publishing(force) as pub:
            if fmt == "hf":
                net = _plain(nets[0])
                folder = pub.folder(out)
                try:
                    net.save_pretrained(str(folder))
                    (folder / "README.md").write_text(model_card(opened[0], doc), encoding="utf-8")
                except Exception as exc:  # noqa: BLE001 - safetensors raises its own type for a full disk
                    full = disk_full(out, exc)
                    if full is None:
                        raise
                    raise full from None
                loaded = load_backend(folder, fmt)
                graph = Probabilities([net], [1.0]).eval()
                diff = _max_diff(
                    lambda x, size: graph(x, size_input(size)),
                    lambda x, size: torch.sigmoid(F.interpolate(loaded(x), size, mode="bilinear", align_corners=False)),
                    _cases(cfg),
                )
                _check_diff(diff, out)
                doc[HASH_KEY] = integrity(folder, fmt, json.loads(json.dumps(doc)))
                write_json(folder / HF_SIDECAR, dict(doc, max_abs_diff=diff), force=True)
            else:
                graph = Probabilities(nets, weights).eval()
                cases = _cases(cfg)
                tmp = pub.file(out)
                _write_graph(graph, fmt, tmp, cases[0][0], out)
                diff = _max_diff(lambda x, size: graph(x, size_input(size)), load_backend(tmp, fmt), cases)
                _check_diff(diff, out)
                doc[HASH_KEY] = integrity(tmp, fmt, json.loads(json.dumps(doc)))
                write_json(pub.file(sidecar), dict(doc, max_abs_diff=diff), force=True)
        task.advance()
    return ExportSummary(str(out), str(sidecar), fmt, len(opened), diff)


def _check_diff(diff: float, out: Path) -> None:
    if not diff <= TOLERANCE:  # also nan
        raise CheckpointError(
            f"{out}: the exported model's probabilities differ from torch's by {diff:.2g} "
            f"(> {TOLERANCE:g}); nothing written"
        )
