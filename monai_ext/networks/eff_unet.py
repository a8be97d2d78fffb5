"""EfficientNet-encoder U-Net: MONAI ``EfficientNetBNFeatures`` (2D or 3D, never pretrained) + U-Net decoder.

The encoder yields 5 maps at strides 2..32 and none at full resolution, so the last decoder stage
upsamples without a skip (as in MONAI ``FlexibleUNet`` / segmentation_models_pytorch). Weights are always
random: pretrained 2D ImageNet weights do not exist in 3D and would need a download.

Normalisation: ``norm`` reaches the backbone too. MONAI builds it with TensorFlow's batch norm (momentum
0.01, eps 1e-3), made for ImageNet-length training: after a short training its running statistics still
lag the weights by hundreds of steps, so eval-mode predictions differed from training's (validation Dice
0 while the loss fell). Here it gets PyTorch's convention (momentum 0.1, eps 1e-5), or instance/group norm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from monai.networks.nets.efficientnet import EfficientNetBNFeatures, EfficientNetEncoder
from torch import nn

from .base import SegmentationNetwork, refuse_unless
from .blocks import GROUPS, ActSpec, DoubleConv, NormSpec, UpSample, check_features, norm_spec
from .stages import Decoder, SegHead, place_dropout

__all__ = ["EffUNet"]

_N_STAGES = 5
_BACKBONES = EfficientNetEncoder.backbone_names[:8]


class EffUNet(SegmentationNetwork):
    """U-Net decoder on an EfficientNet backbone.

    Args:
        features: *decoder* widths per level, full resolution -> 1/16 (5 values); the encoder widths
            are fixed by ``backbone``.
        backbone: "efficientnet-b0" ... "efficientnet-b7" (random init).
        norm: "batch" (PyTorch momentum 0.1), "instance", "group" or None, in the backbone *and* the
            decoder (instance norm needs inputs of >= 64 per axis: the stride-32 map must exceed 1 voxel).
        act / dropout / dropout_position / bias / upsample / up_kernel_size: decoder options, as in
            :class:`~monai_ext.networks.unet.UNet` (the backbone keeps its swish; the bottleneck dropout
            acts on the stride-32 map).
        **common: see :class:`~monai_ext.networks.base.SegmentationNetwork`; aux heads tap decoder
            levels 1..4 (1/2 .. 1/16); CGM sits on the stride-32 encoder map.
    """

    size_divisor = 2**_N_STAGES
    min_levels = max_levels = _N_STAGES
    features_meaning = "decoder widths, full resolution .. 1/16"

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
        dropout_position: str = "bottleneck",
        bias: bool = True,
        upsample: str = "deconv",
        up_kernel_size: int = 2,
        **common: Any,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, **common)
        feats = check_features(features, _N_STAGES, _N_STAGES, self.features_meaning)
        _check_backbone(backbone)
        enc = EfficientNetEncoder.num_channels_per_output()[_BACKBONES.index(backbone)]
        self.features = feats
        # EfficientNet widths are multiples of 8 (round_filters), so GROUPS groups divide every layer
        backbone_norm = norm_spec(norm, GROUPS) or ""  # MONAI: "" = no norm layer
        self.encoder = EfficientNetBNFeatures(
            backbone, pretrained=False, progress=False, spatial_dims=spatial_dims, in_channels=in_channels,
            norm=backbone_norm,
        )
        # the ImageNet classifier tail is never used by the feature forward: drop it (1.7M params in b0)
        for unused in ("_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc"):
            setattr(self.encoder, unused, nn.Identity())
        dropout, self.bottleneck_dropout = place_dropout(spatial_dims, dropout, dropout_position)
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

    @classmethod
    def check_config(cls, features: Sequence[int] | None, options: Mapping[str, Any]) -> None:
        """Also refuse an unknown ``backbone`` (five widths: ``min_levels``/``max_levels``)."""
        super().check_config(features, options)
        if "backbone" in options:
            refuse_unless("backbone", _check_backbone, options["backbone"])

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        feats = self.encoder(x)  # strides 2, 4, 8, 16, 32
        skips: list[torch.Tensor | None] = [*feats[-2::-1], None]
        outs = self.decoder(self.bottleneck_dropout(feats[-1]), skips)
        aux: list[torch.Tensor] = []
        if self.wants_aux:
            aux = [head(outs[-2 - k]) for k, head in enumerate(self.aux_heads)]
        return self.head(outs[-1]), aux, feats[-1]


def _check_backbone(backbone: str) -> None:
    if backbone not in _BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(_BACKBONES)}")
