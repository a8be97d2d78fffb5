"""Classification-guided module (CGM) loss of UNet 3+: does this image contain any foreground?

UNet 3+ adds an image-level classifier on the deepest encoder features and uses its prediction to
suppress false-positive segmentations in organ-free slices. It is trained against the label derived
from the segmentation target itself, so no extra annotation is needed.

What the classifier's logits mean is defined once, by :func:`monai_ext.networks.cgm_probability`
(``softmax(l)[:, 1] = sigmoid(present − absent)``); the loss here is the binary cross-entropy of exactly
that probability, so the gates that threshold it at inference act on what training optimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..networks.outputs import cgm_presence_logit

__all__ = ["CGMLoss", "has_foreground"]


def has_foreground(target: torch.Tensor, background: int = 0) -> torch.Tensor:
    """``[B]`` bool: whether each sample's target has any non-background voxel."""
    return (target != background).reshape(target.shape[0], -1).any(dim=1)


class CGMLoss(nn.Module):
    """BCE of :func:`~monai_ext.networks.cgm_probability` against "target has foreground", per sample.

    * ``[B]`` or ``[B, 1]`` logits: one "present" logit, the probability its sigmoid.
    * ``[B, 2]`` logits: columns ``(absent, present)``, the probability ``sigmoid(present − absent)``:
      numerically the 2-class softmax cross-entropy, and ``P > 0.5`` is the UNet 3+ reference's argmax.

    Computed with ``BCEWithLogits`` on the log-odds (:func:`~monai_ext.networks.cgm_presence_logit`), not
    on the rounded probability: a confidently wrong sample keeps its gradient instead of saturating.
    """

    def __init__(self, background: int = 0) -> None:
        super().__init__()
        self.background = background

    def forward(self, class_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_odds = cgm_presence_logit(class_logits.float())
        present = has_foreground(target, self.background).to(log_odds.device, log_odds.dtype)
        return F.binary_cross_entropy_with_logits(log_odds, present)
