"""Region-overlap losses (soft Dice, soft IoU) on softmax probabilities, 2D/3D."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

from ._utils import check_logits, index_target

__all__ = ["SoftDiceLoss", "SoftIoULoss"]


class SoftDiceLoss(nn.Module):
    """Soft Dice on softmax probabilities (``monai.losses.DiceLoss``), per sample and class.

    ``jaccard=True`` turns it into the soft IoU (Jaccard) loss ``1 - I / (|P| + |G| - I)``.
    A class absent from both prediction and target scores 0 loss thanks to the smoothing terms.
    """

    def __init__(self, include_background: bool = True, jaccard: bool = False, smooth: float = 1e-5) -> None:
        super().__init__()
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            jaccard=jaccard,
            smooth_nr=smooth,
            smooth_dr=smooth,
        )

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_logits(logits)
        return self.dice(logits, index_target(target, logits).unsqueeze(1))


class SoftIoULoss(SoftDiceLoss):
    """Soft IoU (Jaccard) loss; background excluded by default as in UNet 3+'s foreground maps."""

    def __init__(self, include_background: bool = False, smooth: float = 1e-5) -> None:
        super().__init__(include_background=include_background, jaccard=True, smooth=smooth)
