"""Residual U-Net: the U-Net layout with a residual unit (two convs + shortcut) at every encoder and
decoder level, like MONAI's ``UNet(num_res_units=2)`` but with max-pool down / transposed-conv up so it
shares :class:`~monai_ext.networks.unet.UNet`'s encoder/decoder code. Residual shortcuts ease optimisation
of deeper/wider models; same padding only (the shortcut needs equal shapes).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from .blocks import ActSpec, BlockFactory, NormSpec, ResidualBlock
from .unet import UNet

__all__ = ["ResUNet"]


class ResUNet(UNet):
    """U-Net with :class:`~monai_ext.networks.blocks.ResidualBlock` levels.

    Options as :class:`~monai_ext.networks.unet.UNet` minus ``padding`` (same padding only).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        upsample: str = "deconv",
        up_kernel_size: int = 2,
        head_kernel_size: int = 1,
        **common: Any,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            features=features,
            norm=norm,
            act=act,
            dropout=dropout,
            bias=bias,
            padding="same",
            upsample=upsample,
            up_kernel_size=up_kernel_size,
            head_kernel_size=head_kernel_size,
            **common,
        )

    def level_block(self, spatial_dims: int, **options: Any) -> BlockFactory:
        options.pop("padding")
        return partial(ResidualBlock, spatial_dims, **options)
