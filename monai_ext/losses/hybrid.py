"""Hybrid segmentation losses of the U-Net family papers.

* :class:`CEDiceLoss` - UNet++ (Zhou et al., 2018): cross-entropy + soft Dice.
* :class:`FocalMSSSIMIoULoss` - UNet 3+ (Huang et al., 2020): focal + MS-SSIM + IoU, which the
  authors motivate as pixel-, patch- and map-level supervision respectively.

Both take ``(logits [B, C, *spatial], target [B, 1, *spatial] indices, weight=None)``; the optional
weight map only modulates the voxel-wise term (CE / focal) since Dice, IoU and MS-SSIM are region
measures with no per-voxel decomposition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import check_logits, index_target, one_hot
from .focal import FocalLoss
from .ms_ssim import MS_SSIM_WEIGHTS, MSSSIMLoss
from .region import SoftDiceLoss, SoftIoULoss
from .weighted_ce import PixelWeightedCrossEntropyLoss

__all__ = ["CEDiceLoss", "FocalMSSSIMIoULoss"]


class CEDiceLoss(nn.Module):
    """UNet++ hybrid ``lambda_ce * CE + lambda_dice * Dice``; CE optionally pixel-weighted.

    UNet++ averages Dice over all classes including background, hence ``include_background=True``.
    """

    def __init__(
        self,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        include_background: bool = True,
        normalization: str = "voxels",
        class_weight: Sequence[float] | None = None,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.lambda_ce, self.lambda_dice = float(lambda_ce), float(lambda_dice)
        self.ce = PixelWeightedCrossEntropyLoss(normalization=normalization, class_weight=class_weight)
        self.dice = SoftDiceLoss(include_background=include_background, smooth=smooth)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.lambda_ce * self.ce(logits, target, weight) + self.lambda_dice * self.dice(logits, target)


class FocalMSSSIMIoULoss(nn.Module):
    """UNet 3+ hybrid ``focal + MS-SSIM + IoU`` for 2D and 3D.

    MS-SSIM compares each foreground class probability map with its one-hot target (see
    :class:`~monai_ext.losses.ms_ssim.MSSSIMLoss`); patches smaller than the 11-voxel window get fewer
    scales / a smaller window automatically.
    """

    def __init__(
        self,
        lambda_focal: float = 1.0,
        lambda_msssim: float = 1.0,
        lambda_iou: float = 1.0,
        gamma: float = 2.0,
        alpha: Sequence[float] | None = None,
        include_background: bool = False,
        win_size: int = 11,
        win_sigma: float = 1.5,
        msssim_weights: Sequence[float] = MS_SSIM_WEIGHTS,
        normalization: str = "voxels",
    ) -> None:
        super().__init__()
        self.lambda_focal, self.lambda_msssim, self.lambda_iou = (
            float(lambda_focal),
            float(lambda_msssim),
            float(lambda_iou),
        )
        self.focal = FocalLoss(gamma=gamma, alpha=alpha, normalization=normalization)
        self.msssim = MSSSIMLoss(include_background, win_size, win_sigma, msssim_weights)
        self.iou = SoftIoULoss(include_background=include_background)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_logits(logits)
        index = index_target(target, logits)
        probs = F.softmax(logits, dim=1)
        onehot = one_hot(index, logits.shape[1], probs.dtype)
        return (
            self.lambda_focal * self.focal(logits, index, weight)
            + self.lambda_msssim * self.msssim(probs, onehot)
            + self.lambda_iou * self.iou(logits, index)
        )
