"""The wrist second stage at inference: a wrist model refines the carpal channels of a first-stage prediction
(the training side, crops and `WristCache`, is `boneseg.data.wrist`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from boneseg.data.layout import side_from_masks
from boneseg.data.wrist import CARPAL_IDX, box_from_masks


class WristStage:
    """A loaded wrist model that refines a first-stage prediction (see the module notes)."""

    def __init__(self, lm, device: torch.device):
        self.lm, self.device = lm, device
        self.margin, self.size = lm.config.wrist_margin, lm.config.size

    @torch.no_grad()
    def refine(self, probs: torch.Tensor, image: torch.Tensor, side: str | None = None) -> torch.Tensor:
        """Replace the carpal channels of `probs` (29, H, W), in place, using the full-size uint8 `image`.
        `side`: the image's hand side when known (its file name's suffix, as the first stage uses), else the
        side the first stage's masks show."""
        from boneseg.data.layout import resize_image
        from boneseg.data.transforms import normalize

        box = box_from_masks(probs, self.margin)
        if box is None:
            return probs
        y0, y1, x0, x1 = box
        crop = np.asarray(image.cpu().numpy() if isinstance(image, torch.Tensor) else image)[y0:y1, x0:x1]
        flip = False
        if self.lm.unify:
            seen = side if side in ("L", "R") else side_from_masks(probs)
            flip = seen is not None and seen != self.lm.unify
        crop = np.ascontiguousarray(crop[:, ::-1] if flip else crop)
        x = torch.from_numpy(resize_image(crop, (self.size, self.size)))[None]  # as the WristCache resized
        x = normalize(x.to(self.device), self.lm.config)
        y = torch.sigmoid(self.lm.model(x).float())
        y = F.interpolate(y, (y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]
        if flip:
            y = y.flip(-1)
        probs[CARPAL_IDX] = 0
        probs[CARPAL_IDX, y0:y1, x0:x1] = y[CARPAL_IDX].to(probs.dtype)
        return probs
