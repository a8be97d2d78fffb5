"""Mobile U-Net: MobileNetV2 inverted-residual encoder + depthwise-separable decoder, 2D and 3D.

Depthwise convolutions are grouped convs from MONAI's ``Conv`` factory, so the same code builds a 3D
model; in 3D the k^3 saving of separable convs matters most. Each encoder level below the first is an
inverted residual with stride 2 (it replaces max-pooling; per axis: the level's ``strides`` entry)
followed by one with stride 1. Every depthwise conv at level i (the stem's too) has kernel
``kernel_sizes[i]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from .base import SegmentationNetwork
from .blocks import ActSpec, ConvNormAct, InvertedResidual, NormSpec, SeparableConv, UpSample, check_features
from .stages import Decoder, SegHead, place_dropout
from .topology import Axes

__all__ = ["MobileUNet"]


class MobileEncoder(nn.Module):
    """Stem conv + inverted residuals; returns one map per level (shallow -> deep) like the U-Net encoder.

    Level i + 1 starts with an inverted residual of stride ``strides[i]``; level i's convs use kernel
    ``kernel_sizes[i]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: Sequence[int],
        expand_ratio: int,
        norm: NormSpec,
        act: ActSpec,
        strides: Sequence[Axes],
        kernel_sizes: Sequence[Axes],
    ) -> None:
        super().__init__()
        ir = partial(InvertedResidual, spatial_dims, norm=norm, act=act)
        k0 = kernel_sizes[0]
        levels = [
            nn.Sequential(
                ConvNormAct(spatial_dims, in_channels, features[0], k0, norm=norm, act=act, bias=False),
                ir(features[0], features[0], expand_ratio=1, kernel_size=k0),
            )
        ]
        for i, (cin, cout) in enumerate(zip(features[:-1], features[1:], strict=True)):
            k = kernel_sizes[i + 1]
            levels.append(
                nn.Sequential(
                    ir(cin, cout, stride=strides[i], expand_ratio=expand_ratio, kernel_size=k),
                    ir(cout, cout, stride=1, expand_ratio=expand_ratio, kernel_size=k),
                )
            )
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


class MobileUNet(SegmentationNetwork):
    """Lightweight U-Net for CPU/edge inference and large 3D volumes.

    Args:
        features: widths per level, shallow -> deep.
        expand_ratio: inverted-residual expansion (6 in MobileNetV2).
        norm / act: as elsewhere (ReLU6 by default, as in MobileNetV2).
        dropout / dropout_position: as in :class:`~monai_ext.networks.unet.UNet`; ``"all"`` drops after each
            decoder block (the inverted residuals never drop).
        upsample / up_kernel_size: decoder up-sampling, see :class:`~monai_ext.networks.blocks.UpSample`.
        **common: see :class:`~monai_ext.networks.base.SegmentationNetwork`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        expand_ratio: int = 6,
        norm: NormSpec = "batch",
        act: ActSpec = "relu6",
        dropout: float = 0.0,
        dropout_position: str = "bottleneck",
        upsample: str = "deconv",
        up_kernel_size: int = 2,
        **common: Any,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, **common)
        feats = check_features(features)
        self.features = feats
        self.depth = len(feats)
        self._init_topology(feats)
        dropout, self.bottleneck_dropout = place_dropout(spatial_dims, dropout, dropout_position)
        block = partial(SeparableConv, spatial_dims, norm=norm, act=act, dropout=dropout)
        up = partial(UpSample, spatial_dims, mode=upsample, kernel_size=up_kernel_size)
        dec = feats[-2::-1]
        self.encoder = MobileEncoder(spatial_dims, in_channels, feats, expand_ratio, norm, act, self.strides,
                                     self.kernel_sizes)
        self.decoder = Decoder(feats[-1], dec, dec, up, block, scales=self.strides[::-1],
                               kernel_sizes=self.kernel_sizes[-2::-1])
        self.head = SegHead(spatial_dims, feats[0], out_channels)
        self.aux_heads = (
            nn.ModuleList(
                SegHead(spatial_dims, feats[level], out_channels) for level in range(1, self.depth - 1)
            )
            if self.deep_supervision
            else nn.ModuleList()
        )
        self._init_cgm(feats[-1])

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        feats = self.encoder(x)
        outs = self.decoder(self.bottleneck_dropout(feats[-1]), feats[-2::-1])
        aux: list[torch.Tensor] = []
        if self.wants_aux:
            aux = [head(outs[-2 - k]) for k, head in enumerate(self.aux_heads)]
        return self.head(outs[-1]), aux, feats[-1]
