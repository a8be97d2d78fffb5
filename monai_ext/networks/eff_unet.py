"""EfficientNet-encoder U-Net: MONAI ``EfficientNetBNFeatures`` (2D or 3D, never pretrained) + U-Net decoder.

The encoder yields 5 maps at strides 2..32 and none at full resolution, so the last decoder stage
upsamples without a skip (as in MONAI ``FlexibleUNet`` / segmentation_models_pytorch). Weights are always
random: pretrained 2D ImageNet weights do not exist in 3D and would need a download.

Anisotropy: ``strides`` has one entry per backbone downsampling (5: the stem and the first block of the
stride-2 stages) and ``kernel_sizes`` one per resolution level (6: full .. 1/32); the decoder upsamples by
the strides and convolves with the kernels like :class:`~monai_ext.networks.unet.UNet`. The backbone's
convs keep their own sizes (3 or 5) except on axes a level's kernel is 1 there: those get the centre tap
only, so nothing mixes across that axis (a thick-slice z) at that level.

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
from monai.networks.layers.factories import Pad
from monai.networks.nets.efficientnet import EfficientNetBNFeatures, EfficientNetEncoder
from torch import nn

from .base import SegmentationNetwork, refuse_unless
from .blocks import GROUPS, ActSpec, DoubleConv, NormSpec, UpSample, check_features, norm_spec
from .stages import Decoder, SegHead, place_dropout
from .topology import Axes

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
            levels 1..4 (1/2 .. 1/16); CGM sits on the stride-32 encoder map. ``strides``: 5 entries (the
            backbone's downsamplings), ``kernel_sizes``: 6 (full resolution .. 1/32), see module docstring.
    """

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
        self._init_topology(feats)
        # EfficientNet widths are multiples of 8 (round_filters), so GROUPS groups divide every layer
        backbone_norm = norm_spec(norm, GROUPS) or ""  # MONAI: "" = no norm layer
        self.encoder = EfficientNetBNFeatures(
            backbone, pretrained=False, progress=False, spatial_dims=spatial_dims, in_channels=in_channels,
            norm=backbone_norm,
        )
        # the ImageNet classifier tail is never used by the feature forward: drop it (1.7M params in b0)
        for unused in ("_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc"):
            setattr(self.encoder, unused, nn.Identity())
        if any(s != (2,) * spatial_dims for s in self.strides) or any(1 in k for k in self.kernel_sizes):
            _fit_backbone(self.encoder, self.strides, self.kernel_sizes)
        dropout, self.bottleneck_dropout = place_dropout(spatial_dims, dropout, dropout_position)
        block = partial(DoubleConv, spatial_dims, norm=norm, act=act, dropout=dropout, bias=bias)
        up = partial(UpSample, spatial_dims, mode=upsample, kernel_size=up_kernel_size, bias=bias)
        skips = (*enc[-2::-1], 0)  # 1/16, 1/8, 1/4, 1/2, none at full resolution
        self.decoder = Decoder(enc[-1], skips, feats[::-1], up, block, scales=self.strides[::-1],
                               kernel_sizes=self.kernel_sizes[-2::-1])
        self.head = SegHead(spatial_dims, feats[0], out_channels)
        self.aux_heads = (
            nn.ModuleList(SegHead(spatial_dims, feats[level], out_channels) for level in range(1, _N_STAGES))
            if self.deep_supervision
            else nn.ModuleList()
        )
        self._init_cgm(enc[-1])

    @classmethod
    def topology_lengths(cls, features: Sequence[int] | None) -> tuple[int, int]:
        """Five strides (the backbone's downsamplings) and six kernels (full resolution .. 1/32)."""
        return _N_STAGES, _N_STAGES + 1

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


def _fit_backbone(encoder: EfficientNetBNFeatures, strides: Sequence[Axes], kernel_sizes: Sequence[Axes]) -> None:
    """Give the backbone's downsampling convs ``strides`` and cut its kernels to 1 where a level's is 1.

    The downsamplings are the stem and the depthwise conv of each stage's first block with stride > 1;
    a conv belongs to the level its output lies at. Weights keep their (random) values: a cut kernel keeps
    its centre taps. MONAI pads these convs TF-style with fixed pads; they are recomputed for the new
    geometry (``k - s`` in all, inputs being multiples of the strides after the base class's padding).
    """
    convs: list[tuple[nn.Module, str, int, Axes | None]] = [(encoder, "_conv_stem", 1, strides[0])]
    level = 1
    for stack in encoder._blocks:
        for j, block in enumerate(stack):
            stride = None
            if j == 0 and block.stride > 1:
                level += 1
                stride = strides[level - 1]
            convs.append((block, "_depthwise_conv", level, stride))
    for owner, name, level, stride in convs:
        conv = getattr(owner, name)
        kernel = tuple(k if lk > 1 else 1 for k, lk in zip(conv.kernel_size, kernel_sizes[level], strict=True))
        if kernel != tuple(conv.kernel_size):
            centre = tuple(slice((k - n) // 2, (k - n) // 2 + n) for k, n in zip(conv.kernel_size, kernel, strict=True))
            conv.weight = nn.Parameter(conv.weight.detach()[(slice(None), slice(None), *centre)].clone())
            conv.kernel_size = kernel
        if stride is not None:
            conv.stride = tuple(stride)
        setattr(owner, f"{name}_padding", _same_padder(conv))


def _same_padder(conv: nn.Module) -> nn.Module:
    """TF-style "same" padding of a strided conv on inputs that are multiples of its stride."""
    total = [max(k - s, 0) for k, s in zip(conv.kernel_size, conv.stride, strict=True)]
    pads = [p for t in reversed(total) for p in (t // 2, t - t // 2)]
    return Pad["constantpad", len(total)](padding=pads, value=0.0) if any(pads) else nn.Identity()
