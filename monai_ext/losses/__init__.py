"""Losses of the U-Net family papers (U-Net, UNet++, UNet 3+, nnU-Net deep supervision), 2D and 3D."""

from .cgm import CGMLoss, has_foreground
from .deep_supervision import DeepSupervisionLoss, deep_supervision_weights, resize_nearest
from .factory import CGM_DEFAULT_WEIGHT, LOSS_REGISTRY, SegmentationLoss, build_loss, register_loss, split_output
from .focal import FocalLoss
from .hybrid import CEDiceLoss, FocalMSSSIMIoULoss
from .ms_ssim import MS_SSIM_WEIGHTS, MSSSIMLoss, ms_ssim
from .region import SoftDiceLoss, SoftIoULoss
from .weighted_ce import PixelWeightedCrossEntropyLoss

__all__ = [
    "CGM_DEFAULT_WEIGHT",
    "LOSS_REGISTRY",
    "MS_SSIM_WEIGHTS",
    "CEDiceLoss",
    "CGMLoss",
    "DeepSupervisionLoss",
    "FocalLoss",
    "FocalMSSSIMIoULoss",
    "MSSSIMLoss",
    "PixelWeightedCrossEntropyLoss",
    "SegmentationLoss",
    "SoftDiceLoss",
    "SoftIoULoss",
    "build_loss",
    "deep_supervision_weights",
    "has_foreground",
    "ms_ssim",
    "register_loss",
    "resize_nearest",
    "split_output",
]
