"""UNet 3+ (Huang et al., ICASSP 2020): full-scale skip connections, full-scale deep supervision, CGM.

Decoder stage at level i receives *every* scale, each through a 3x3 conv to ``cat_channels``:
shallower encoder maps are max-pooled down by 2**(i-s) (per axis: the product of ``strides`` between the
two levels), the same-level encoder map passes as is, deeper
decoder maps (and the bottom encoder map) are bi/trilinearly upsampled. The ``depth * cat_channels``
(paper: 5 x 64 = 320) concatenation is fused by one conv+norm+ReLU. The stages are built by a loop over
levels (the reference code unrolls ~100 layer definitions by hand).

Branch width: ``cat_channels`` defaults to the first encoder width, the reference code's rule
(``CatChannels = filters[0]``): 64 for the paper's widths 64..1024, but it shrinks with the encoder. A
fixed 64 at small widths makes the decoder dominate: at widths 16..256 on a 256x256 image the
full-resolution fusion conv alone (320 -> 320, 3x3) costs 20x a whole U-Net's forward FLOPs, the network
46x; with the rule (16-wide branches) it costs 4.1x, two thirds of it in the full-resolution stage
(five branch convs and the fusion at full resolution: UNet 3+'s design, not a tuning choice).

Deep supervision: a 3x3 head on each decoder stage and on the bottleneck (paper: upsampled to full size;
here per ``aux_resolution``, see :mod:`monai_ext.networks.outputs`). CGM: ``cgm=True`` (shared
:class:`~monai_ext.networks.blocks.CGMHead` on the bottleneck). The reference code gates with an argmax,
which has no gradient, and never returns the classifier output, so its BCE term cannot train; here the
class logits are returned in training and gating is an opt-in eval-time threshold (``cgm_gate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from monai.networks.layers.factories import Pool
from torch import nn

from .base import SegmentationNetwork
from .blocks import ActSpec, ConvNormAct, DoubleConv, NormSpec, check_features, resize_to
from .stages import Encoder, SegHead, place_dropout
from .topology import Axes, capped, scale_between

__all__ = ["UNet3Plus"]


class FullScaleStage(nn.Module):
    """One UNet 3+ decoder stage at ``level``: one branch per source scale, concatenation, fusion conv.

    ``strides`` (per axis, one per downsampling) set how far each shallower source is max-pooled: by the
    product of the strides between its level and this one; ``conv`` builds this level's branch convs.
    """

    def __init__(
        self,
        spatial_dims: int,
        level: int,
        source_channels: Sequence[int],
        cat_channels: int,
        conv: partial,
        strides: Sequence[Axes],
    ) -> None:
        super().__init__()
        self.level = level
        self.pools = nn.ModuleList(
            Pool[Pool.MAX, spatial_dims](kernel_size=scale_between(strides, s, level), ceil_mode=True)
            if s < level
            else nn.Identity()
            for s in range(len(source_channels))
        )
        self.branches = nn.ModuleList(conv(c, cat_channels) for c in source_channels)
        fused = cat_channels * len(source_channels)
        self.fuse = conv(fused, fused)

    def forward(self, sources: Sequence[torch.Tensor]) -> torch.Tensor:
        """``sources[s]`` is the map at level s (encoder for s <= level, decoder/bottleneck deeper)."""
        target = sources[self.level].shape[2:]
        outs = []
        for s, (pool, branch) in enumerate(zip(self.pools, self.branches, strict=True)):
            x = pool(sources[s])
            if s > self.level:
                x = resize_to(x, target)
            outs.append(branch(x))
        return self.fuse(torch.cat(outs, dim=1))


class UNet3Plus(SegmentationNetwork):
    """UNet 3+ with configurable depth/widths.

    Args:
        features: encoder widths per level (paper: 64..1024).
        cat_channels: width of every full-scale branch; default (None) ``features[0]``, the reference
            code's rule (64 for the paper's widths). The decoder width is depth * cat_channels.
        norm / act / dropout / dropout_position / bias: as in :class:`~monai_ext.networks.unet.UNet`
            (paper: batch norm, ReLU).
        head_kernel_size: output conv kernel (3 in the reference code); 1 on the axes a level's
            ``kernel_sizes`` entry keeps apart (the heads at that level's resolution).
        **common: see :class:`~monai_ext.networks.base.SegmentationNetwork`; aux heads = decoder stages
            1 .. depth-2 then the bottleneck (high -> low resolution).
    """

    #: the paper supervises every scale, the bottleneck (En5) included, with the same weight
    deep_supervision_weights = "equal"

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        cat_channels: int | None = None,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dropout: float = 0.0,
        dropout_position: str = "bottleneck",
        bias: bool = True,
        head_kernel_size: int = 3,
        **common: Any,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, **common)
        feats = check_features(features)
        cat_channels = feats[0] if cat_channels is None else int(cat_channels)
        if cat_channels <= 0:
            raise ValueError(f"cat_channels must be a positive width, got {cat_channels}")
        self.features = feats
        self.cat_channels = cat_channels
        self.depth = depth = len(feats)
        self._init_topology(feats)
        up_channels = cat_channels * depth
        dropout, self.bottleneck_dropout = place_dropout(spatial_dims, dropout, dropout_position)
        block = partial(DoubleConv, spatial_dims, norm=norm, act=act, dropout=dropout, bias=bias)
        conv = partial(ConvNormAct, spatial_dims, norm=norm, act=act, bias=bias)

        self.encoder = Encoder(spatial_dims, in_channels, feats, block, self.strides, self.kernel_sizes)
        # stages[k] builds decoder level depth-2-k (deep -> shallow)
        stages = []
        for level in range(depth - 2, -1, -1):
            sources = [feats[s] if s <= level else up_channels for s in range(depth - 1)] + [feats[-1]]
            level_conv = partial(conv, kernel_size=self.kernel_sizes[level])
            stages.append(FullScaleStage(spatial_dims, level, sources, cat_channels, level_conv, self.strides))
        self.stages = nn.ModuleList(stages)
        head_kernels = [capped(head_kernel_size, k) for k in self.kernel_sizes]  # heads at levels 0, 1, ...
        self.head = SegHead(spatial_dims, up_channels, out_channels, head_kernels[0])
        aux_in = [up_channels] * (depth - 2) + [feats[-1]]
        self.aux_heads = (
            nn.ModuleList(SegHead(spatial_dims, c, out_channels, head_kernels[k + 1]) for k, c in enumerate(aux_in))
            if self.deep_supervision
            else nn.ModuleList()
        )
        self._init_cgm(feats[-1])

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        sources = self.encoder(x)  # levels 0..depth-1; replaced by decoder maps as they are computed
        bottleneck = sources[-1]  # the CGM classifies the features as encoded, before the decoder's dropout
        sources[-1] = self.bottleneck_dropout(bottleneck)
        for stage in self.stages:
            sources = [*sources[: stage.level], stage(sources), *sources[stage.level + 1 :]]
        aux: list[torch.Tensor] = []
        if self.wants_aux:  # decoder levels 1..depth-2, then the bottleneck
            aux = [head(sources[k + 1]) for k, head in enumerate(self.aux_heads)]
        return self.head(sources[0]), aux, bottleneck
