"""Residual U-Net with strided-conv residual downsampling: the topology of MONAI's ``UNet(num_res_units=2)``.

Layout (``features`` = f0..f{n-1}, like MONAI's ``channels`` with all strides 2):

* encoder level k (k = 0..n-2): a :class:`~monai_ext.networks.blocks.ResidualUnit` whose first conv has
  stride 2 (and whose shortcut is a strided conv), so level k's f_k-wide map is at 1/2**(k+1) resolution;
  no max-pool, the residual unit itself downsamples (ResUNet, Zhang et al. 2018; MONAI ``UNet``);
* bottleneck: a stride-1 residual unit f{n-2} -> f{n-1} at 1/2**(n-1);
* decoder stage k (deep -> shallow): concatenate level k's skip with the deeper map, then one
  up-convolution (stride 2, + norm + act) straight to level k-1's width and a one-conv residual unit;
  the top stage upsamples to ``out_channels`` and ends with a bare conv: it *is* the logit head.

Every conv therefore runs below full resolution except the output stage, which is why this network is
much cheaper than :class:`~monai_ext.networks.unet.UNet` at the same ``features``. With default options
it has exactly the parameters and layers of ``monai.networks.nets.UNet(d, cin, cout, channels=features,
strides=(2,) * (n - 1), num_res_units=2, norm="batch", act="relu")`` (the benchmark's twin); on top it
adds this package's options (deep supervision, CGM, awkward input sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .base import SegmentationNetwork
from .blocks import ActSpec, NormSpec, ResidualUnit, UpSample, add_norm_act_dropout, check_features
from .stages import SegHead

__all__ = ["ResUNet"]


class _UpStage(nn.Sequential):
    """Up-convolution (x2) -> [norm] -> [act] -> [dropout] -> one-conv residual unit (MONAI's up layer)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        is_top: bool,
        norm: NormSpec,
        act: ActSpec,
        dropout: float,
        bias: bool,
        upsample: str,
        up_kernel_size: int,
        head_kernel_size: int,
    ) -> None:
        super().__init__()
        self.add_module(
            "up", UpSample(spatial_dims, in_channels, out_channels, upsample, kernel_size=up_kernel_size, bias=bias)
        )
        add_norm_act_dropout(self, spatial_dims, out_channels, norm, act, dropout)
        self.add_module(
            "unit",
            ResidualUnit(
                spatial_dims,
                out_channels,
                out_channels,
                subunits=1,
                kernel_size=head_kernel_size if is_top else 3,
                norm=norm,
                act=act,
                dropout=dropout,
                bias=bias,
                last_conv_only=is_top,
            ),
        )


class ResUNet(SegmentationNetwork):
    """Residual U-Net (MONAI ``UNet`` residual topology, see module docstring).

    Args:
        features: widths per level, shallow -> deep (MONAI's ``channels``); ``len(features)`` levels halve
            the resolution ``len(features) - 1`` times (the last two levels share the deepest resolution).
        num_res_units: convs per encoder residual unit (MONAI's ``num_res_units``, >= 1).
        norm / act / dropout / bias: as in :class:`~monai_ext.networks.unet.UNet` (dropout after every
            conv but the output one).
        upsample: "deconv" (transposed conv, default) or "nontrainable" (interpolation + 1x1 conv).
        up_kernel_size: transposed-conv kernel; 3 (MONAI ``UNet``'s default) or 2.
        head_kernel_size: kernel of the final (logit) conv of the output residual unit; 3 as in MONAI.
        **common: see :class:`~monai_ext.networks.base.SegmentationNetwork`. Deep-supervision heads (1x1)
            tap the decoder stages at 1/2 ... 1/2**(n-2) resolution; CGM sits on the bottleneck.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        num_res_units: int = 2,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        upsample: str = "deconv",
        up_kernel_size: int = 3,
        head_kernel_size: int = 3,
        **common: Any,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, **common)
        feats = check_features(features)
        if num_res_units < 1:
            raise ValueError(f"num_res_units must be >= 1, got {num_res_units}")
        self.features = feats
        self.depth = len(feats)
        self.size_divisor = 2 ** (self.depth - 1)
        opts = dict(norm=norm, act=act, dropout=dropout, bias=bias)
        chans = (in_channels, *feats)
        self.down = nn.ModuleList(
            ResidualUnit(spatial_dims, chans[k], chans[k + 1], stride=2, subunits=num_res_units, **opts)
            for k in range(self.depth - 1)
        )
        self.bottom = ResidualUnit(spatial_dims, feats[-2], feats[-1], subunits=num_res_units, **opts)
        # up[k] consumes cat(skip_k, deeper) at 1/2**(k+1) and returns level k-1's width at 1/2**k
        ups = []
        for k in range(self.depth - 1):
            cin = feats[k] + (feats[k + 1] if k == self.depth - 2 else feats[k])
            cout = out_channels if k == 0 else feats[k - 1]
            ups.append(
                _UpStage(
                    spatial_dims,
                    cin,
                    cout,
                    k == 0,
                    **opts,
                    upsample=upsample,
                    up_kernel_size=up_kernel_size,
                    head_kernel_size=head_kernel_size,
                )
            )
        self.up = nn.ModuleList(ups)
        # aux heads on up[k] outputs (width feats[k-1], 1/2**k), k = 1 .. depth-2: high -> low resolution
        self.aux_heads = (
            nn.ModuleList(SegHead(spatial_dims, feats[k - 1], out_channels) for k in range(1, self.depth - 1))
            if self.deep_supervision
            else nn.ModuleList()
        )
        self._init_cgm(feats[-1])

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        skips = []
        for unit in self.down:
            x = unit(x)
            skips.append(x)
        deepest = self.bottom(x)
        y = deepest
        outs: list[torch.Tensor] = [deepest] * len(self.up)  # outs[k] = up[k] output
        for k in range(len(self.up) - 1, -1, -1):
            y = self.up[k](torch.cat([skips[k], y], dim=1))
            outs[k] = y
        aux: list[torch.Tensor] = []
        if self.wants_aux:
            aux = [head(outs[k + 1]) for k, head in enumerate(self.aux_heads)]
        return outs[0], aux, deepest
