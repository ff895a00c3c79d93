"""Inference: checkpoints -> full-resolution probabilities -> streaming submission CSV.

Modules: `sliding` (Gaussian-blended sliding window), `tta` (policies, flips, scales), `predictor`
(models, hand side, views), `stages` (per image: FiLM metadata, wrist second stage), `pipeline` (`PredictOptions`
and `ImageStream`: images -> predictor -> stages -> probabilities, the one loop every prediction runs),
`encode` (quantise, threshold and RLE on the device), `run` (`predict`: the streaming, sharded CSV writer),
`wrist` (the wrist second stage). Scoring TTA policies and searching thresholds on a validation fold is a
workflow: `boneseg.workflows.validation`.
"""

from boneseg.inference.encode import masks_to_rles
from boneseg.inference.pipeline import ImageStream, PredictOptions
from boneseg.inference.predictor import InputPlan, Item, LoadedModel, Predictor, ViewCache, load_models
from boneseg.inference.run import PredictSummary, predict
from boneseg.inference.sliding import gaussian_weights, sliding_window, tile_starts
from boneseg.inference.stages import ImageStages
from boneseg.inference.tta import DEFAULT_SCALES, TTA_NAMES, Policy, default_policies, parse_scales
from boneseg.probs import read_thresholds

__all__ = [
    "DEFAULT_SCALES",
    "TTA_NAMES",
    "ImageStages",
    "ImageStream",
    "InputPlan",
    "Item",
    "LoadedModel",
    "Policy",
    "PredictOptions",
    "PredictSummary",
    "Predictor",
    "ViewCache",
    "default_policies",
    "gaussian_weights",
    "load_models",
    "masks_to_rles",
    "parse_scales",
    "predict",
    "read_thresholds",
    "sliding_window",
    "tile_starts",
]
