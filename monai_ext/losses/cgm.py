"""Classification-guided module (CGM) loss of UNet 3+: does this image contain any foreground?

UNet 3+ adds an image-level classifier on the deepest encoder features and uses its prediction to
suppress false-positive segmentations in organ-free slices. It is trained against the label derived
from the segmentation target itself, so no extra annotation is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CGMLoss", "has_foreground"]


def has_foreground(target: torch.Tensor, background: int = 0) -> torch.Tensor:
    """``[B]`` bool: whether each sample's target has any non-background voxel."""
    return (target != background).reshape(target.shape[0], -1).any(dim=1)


class CGMLoss(nn.Module):
    """BCE between class logits and "target has foreground" per sample.

    * ``[B]`` or ``[B, 1]`` logits: one "present" logit -> ``BCEWithLogits``.
    * ``[B, 2]`` logits: columns ``(absent, present)`` -> 2-class softmax cross-entropy, which is the
      BCE of the softmax "present" probability and matches taking ``argmax`` at inference, as the
      UNet 3+ CGM does.
    """

    def __init__(self, background: int = 0) -> None:
        super().__init__()
        self.background = background

    def forward(self, class_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        present = has_foreground(target, self.background).to(class_logits.device)
        if class_logits.ndim == 1 or (class_logits.ndim == 2 and class_logits.shape[1] == 1):
            return F.binary_cross_entropy_with_logits(
                class_logits.reshape(-1), present.to(class_logits.dtype)
            )
        if class_logits.ndim == 2 and class_logits.shape[1] == 2:
            return F.cross_entropy(class_logits, present.long())
        raise ValueError(f"class logits must be [B], [B, 1] or [B, 2], got {tuple(class_logits.shape)}")
