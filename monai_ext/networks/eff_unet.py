"""EfficientNet-encoder U-Net: MONAI ``EfficientNetBNFeatures`` (2D or 3D, never pretrained) + U-Net decoder.

The encoder yields 5 maps at strides 2..32 and none at full resolution, so the last decoder stage
upsamples without a skip (as in MONAI ``FlexibleUNet`` / segmentation_models_pytorch). Weights are always
random: pretrained 2D ImageNet weights do not exist in 3D and would need a download.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from monai.networks.nets.efficientnet import EfficientNetBNFeatures, EfficientNetEncoder
from torch import nn

from .base import SegmentationNetwork
from .blocks import ActSpec, DoubleConv, NormSpec, UpSample, check_features
from .stages import Decoder, SegHead

__all__ = ["EffUNet"]

_N_STAGES = 5


class EffUNet(SegmentationNetwork):
    """U-Net decoder on an EfficientNet backbone.

    Args:
        features: *decoder* widths per level, full resolution -> 1/16 (5 values); the encoder widths
            are fixed by ``backbone``.
        backbone: "efficientnet-b0" ... "efficientnet-b7" (random init).
        norm / act / dropout / bias / upsample / up_kernel_size: decoder options, as in
            :class:`~monai_ext.networks.unet.UNet` (the backbone keeps its own batch norm and swish).
        **common: see :class:`~monai_ext.networks.base.SegmentationNetwork`; aux heads tap decoder
            levels 1..4 (1/2 .. 1/16); CGM sits on the stride-32 encoder map.
    """

    size_divisor = 2**_N_STAGES

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        backbone: str = "efficientnet-b0",
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        upsample: str = "deconv",
        up_kernel_size: int = 2,
        **common: Any,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, **common)
        feats = check_features(features, min_levels=_N_STAGES)
        if len(feats) != _N_STAGES:
            raise ValueError(
                f"eff_unet features are {_N_STAGES} decoder widths (full res .. 1/16), got {features!r}"
            )
        names = EfficientNetEncoder.backbone_names
        if backbone not in names[:8]:
            raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(names[:8])}")
        enc = EfficientNetEncoder.num_channels_per_output()[names.index(backbone)]
        self.features = feats
        self.encoder = EfficientNetBNFeatures(
            backbone, pretrained=False, progress=False, spatial_dims=spatial_dims, in_channels=in_channels
        )
        # the ImageNet classifier tail is never used by the feature forward: drop it (1.7M params in b0)
        for unused in ("_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc"):
            setattr(self.encoder, unused, nn.Identity())
        block = partial(DoubleConv, spatial_dims, norm=norm, act=act, dropout=dropout, bias=bias)
        up = partial(UpSample, spatial_dims, mode=upsample, kernel_size=up_kernel_size, bias=bias)
        skips = (*enc[-2::-1], 0)  # 1/16, 1/8, 1/4, 1/2, none at full resolution
        self.decoder = Decoder(enc[-1], skips, feats[::-1], up, block)
        self.head = SegHead(spatial_dims, feats[0], out_channels)
        self.aux_heads = (
            nn.ModuleList(SegHead(spatial_dims, feats[level], out_channels) for level in range(1, _N_STAGES))
            if self.deep_supervision
            else nn.ModuleList()
        )
        self._init_cgm(enc[-1])

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        feats = self.encoder(x)  # strides 2, 4, 8, 16, 32
        skips: list[torch.Tensor | None] = [*feats[-2::-1], None]
        outs = self.decoder(feats[-1], skips)
        aux: list[torch.Tensor] = []
        if self.wants_aux:
            aux = [head(outs[-2 - k]) for k, head in enumerate(self.aux_heads)]
        return self.head(outs[-1]), aux, feats[-1]
