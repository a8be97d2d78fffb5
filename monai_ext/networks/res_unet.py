"""Residual U-Nets: ``res_unet`` is the literature's ResUNet, ``res_unet_monai`` MONAI's residual ``UNet``.

``res_unet`` (:class:`ResUNet`; Zhang, Liu & Wang 2018, "Road Extraction by Deep Residual U-Net"),
``features`` = f0..f{n-1} (paper: 64, 128, 256 and the bridge 512):

* encoder level 0 stays at full resolution: the paper's input unit, conv -> norm -> act -> conv plus a
  1x1 shortcut (no norm/act on the raw image);
* encoder levels 1..n-2 and the bridge (level n-1): one :class:`PreActResidualUnit` each (norm -> act
  -> conv, twice, plus shortcut) whose first conv has stride 2, so level k is at 1/2**k; no pooling, as in
  the paper;
* decoder stage at level k (deep -> shallow): x2 upsampling of the deeper map (parameter-free nearest by
  default: the paper's "up-sampling"), concatenation with level k's skip, one pre-activation unit to f_k;
  the last stage concatenates the full-resolution level-0 map (the skip MONAI's form lacks);
* head: a 1x1 conv to ``out_channels``.

The paper's 2D configuration (3 in, 1 out, features (64, 128, 256, 512)) has 8,220,993 parameters here
against the 7.8M it reports (+5.4%). The difference is the 1x1 projection shortcuts, which the paper does
not describe (431,680 parameters; without them 7,789,313, i.e. 7.8M); a unit that changes width cannot
add its input without one, so reimplementations keep them, and so does this one.

``res_unet_monai`` (:class:`MonaiResUNet`) keeps the topology of MONAI's ``UNet(num_res_units=2)``
(``features`` like MONAI's ``channels``, all strides 2):

* encoder level k (k = 0..n-2): a post-activation :class:`~monai_ext.networks.blocks.ResidualUnit` whose
  first conv has stride 2 (and whose shortcut is a strided conv), so level k's f_k-wide map is at
  1/2**(k+1) resolution: there is no full-resolution level and no full-resolution skip;
* bottleneck: a stride-1 residual unit f{n-2} -> f{n-1} at 1/2**(n-1);
* decoder stage k (deep -> shallow): concatenate level k's skip with the deeper map, then one
  up-convolution (stride 2, + norm + act) straight to level k-1's width and a one-conv residual unit;
  the top stage upsamples to ``out_channels`` and ends with a bare conv: it *is* the logit head.

Every conv of that form runs below full resolution except the output stage, which is why it is much
cheaper than :class:`~monai_ext.networks.unet.UNet` at the same ``features``. With default options it has
exactly the parameters and layers of ``monai.networks.nets.UNet(d, cin, cout, channels=features,
strides=(2,) * (n - 1), num_res_units=2, norm="batch", act="relu")`` (the benchmark's twin); on top it
adds this package's options (deep supervision, CGM, awkward input sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from monai.networks.layers.factories import Conv, Dropout
from torch import nn

from .base import SegmentationNetwork
from .blocks import (
    ActSpec,
    NormSpec,
    ResidualUnit,
    UpSample,
    add_norm_act_dropout,
    check_features,
    interp_mode,
    make_act,
    make_norm,
)
from .stages import DecoderStage, SegHead, place_dropout
from .topology import Axes, AxisSpec, capped, is_one, same_padding

__all__ = ["MonaiResUNet", "PreActResidualUnit", "ResUNet"]

_UPSAMPLE_MODES = ("nearest", "linear", "deconv")


class PreActResidualUnit(nn.Module):
    """Pre-activation residual unit (He et al. 2016): [norm -> act] -> conv -> norm -> act -> conv, + shortcut.

    Why pre-activation (the ResUNet of Zhang et al. 2018 uses it): nothing follows the sum, so the
    identity path carries features and gradients through every unit untouched. The first conv carries the
    ``stride`` (the paper downsamples this way instead of pooling); the shortcut is the identity, or a
    1x1 conv (strided alike) when the width or resolution changes. ``preactivate=False`` drops the leading
    norm -> act: the paper's input unit convolves the image rather than rectify raw intensities. Dropout
    (if any) sits between the two convs, as in wide ResNets.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: AxisSpec = 1,
        kernel_size: AxisSpec = 3,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        preactivate: bool = True,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]

        def norm_act(channels: int) -> list[nn.Module]:
            return [m for m in (make_norm(norm, spatial_dims, channels), make_act(act)) if m is not None]

        layers = norm_act(in_channels) if preactivate else []
        pad = same_padding(kernel_size)
        layers.append(conv(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=bias))
        layers += norm_act(out_channels)
        if dropout:
            layers.append(Dropout[Dropout.DROPOUT, spatial_dims](dropout))
        layers.append(conv(out_channels, out_channels, kernel_size, padding=pad, bias=bias))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if not is_one(stride) or in_channels != out_channels:
            self.shortcut = conv(in_channels, out_channels, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def width_keeping_upsample(spatial_dims: int, channels: int, mode: str, bias: bool, scale: Axes) -> nn.Module:
    """x``scale`` upsampling that keeps the width: the paper's decoder concatenates the upsampled map as it is."""
    if mode == "deconv":
        return UpSample(spatial_dims, channels, channels, "deconv", kernel_size=2, bias=bias, scale=scale)
    factor = float(scale[0]) if len(set(scale)) == 1 else tuple(float(s) for s in scale)
    if mode == "linear":
        return nn.Upsample(scale_factor=factor, mode=interp_mode(spatial_dims), align_corners=False)
    return nn.Upsample(scale_factor=factor, mode="nearest")


class ResUNet(SegmentationNetwork):
    """Residual U-Net of Zhang et al. 2018: pre-activation units, a full-resolution level (module docstring).

    Args:
        features: widths per level, shallow -> deep, the last one the bridge (paper: 64, 128, 256, 512);
            ``len(features)`` levels halve the resolution ``len(features) - 1`` times.
        norm / act / dropout / bias: as in :class:`~monai_ext.networks.unet.UNet` (paper: batch norm, ReLU);
            dropout sits between the two convs of every unit with ``dropout_position="all"``, once on the
            bridge's output with ``"bottleneck"`` (the default, the U-Net paper's place).
        upsample: "nearest" (default, parameter-free), "linear" (bi/trilinear, parameter-free) or "deconv"
            (a 2x2 transposed conv keeping the width).
        **common: see :class:`~monai_ext.networks.base.SegmentationNetwork`. Deep-supervision heads (1x1)
            tap the decoder stages at 1/2 ... 1/2**(n-2) resolution; CGM sits on the bridge. Encoder unit k
            downsamples by ``strides[k-1]`` in its first conv; units at level k (encoder and decoder)
            convolve with ``kernel_sizes[k]``.
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
        dropout_position: str = "bottleneck",
        bias: bool = True,
        upsample: str = "nearest",
        **common: Any,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, **common)
        if upsample not in _UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {_UPSAMPLE_MODES}, got {upsample!r}")
        feats = check_features(features)
        self.features = feats
        self.depth = len(feats)
        self._init_topology(feats)
        strides, kernels = ((1,) * spatial_dims, *self.strides), self.kernel_sizes
        dropout, self.bottleneck_dropout = place_dropout(spatial_dims, dropout, dropout_position)
        unit = partial(PreActResidualUnit, spatial_dims, norm=norm, act=act, dropout=dropout, bias=bias)
        chans = (in_channels, *feats)
        # level 0: the paper's input unit at full resolution; deeper levels downsample in their first conv
        self.encoder = nn.ModuleList(
            unit(chans[k], chans[k + 1], stride=strides[k], kernel_size=kernels[k], preactivate=k > 0)
            for k in range(self.depth)
        )
        # decoder[j] builds level depth-2-j (deep -> shallow): upsample, cat the level's skip, one unit
        self.decoder = nn.ModuleList(
            DecoderStage(width_keeping_upsample(spatial_dims, feats[k + 1], upsample, bias, strides[k + 1]),
                         unit(feats[k] + feats[k + 1], feats[k], kernel_size=kernels[k]))
            for k in range(self.depth - 2, -1, -1)
        )
        self.head = SegHead(spatial_dims, feats[0], out_channels)
        self.aux_heads = (
            nn.ModuleList(SegHead(spatial_dims, feats[k], out_channels) for k in range(1, self.depth - 1))
            if self.deep_supervision
            else nn.ModuleList()
        )
        self._init_cgm(feats[-1])

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        skips: list[torch.Tensor] = []
        for unit in self.encoder:
            x = unit(x)
            skips.append(x)
        deepest = skips.pop()
        y = self.bottleneck_dropout(deepest)  # the CGM sees the bridge as encoded, the decoder its dropout
        outs: list[torch.Tensor] = []  # deep -> shallow; outs[-1] is at full resolution
        for stage, skip in zip(self.decoder, reversed(skips), strict=True):
            y = stage(y, skip)
            outs.append(y)
        aux: list[torch.Tensor] = []
        if self.wants_aux:  # levels 1 .. depth-2, high -> low resolution
            aux = [head(outs[-2 - k]) for k, head in enumerate(self.aux_heads)]
        return self.head(outs[-1]), aux, deepest


class _UpStage(nn.Sequential):
    """Up-convolution (x``scale``) -> [norm] -> [act] -> [dropout] -> one-conv residual unit (MONAI's up layer).

    ``kernel_size`` is the unit's: the level's kernel, or the output conv's for the top stage (``is_top``).
    """

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
        kernel_size: AxisSpec,
        scale: AxisSpec,
    ) -> None:
        super().__init__()
        self.add_module(
            "up", UpSample(spatial_dims, in_channels, out_channels, upsample, kernel_size=up_kernel_size, bias=bias,
                           scale=scale)
        )
        add_norm_act_dropout(self, spatial_dims, out_channels, norm, act, dropout)
        self.add_module(
            "unit",
            ResidualUnit(
                spatial_dims,
                out_channels,
                out_channels,
                subunits=1,
                kernel_size=kernel_size,
                norm=norm,
                act=act,
                dropout=dropout,
                bias=bias,
                last_conv_only=is_top,
            ),
        )


class MonaiResUNet(SegmentationNetwork):
    """Residual U-Net with MONAI ``UNet``'s residual topology (``res_unet_monai``, see module docstring).

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
            tap the decoder stages at 1/2 ... 1/2**(n-2) resolution; CGM sits on the bottleneck. Encoder
            unit k downsamples by ``strides[k]`` and convolves at its output's level, k + 1, with
            ``kernel_sizes[k + 1]`` (the bottleneck: the last entry); up stage k returns to level k by
            ``strides[k]`` and its unit uses ``kernel_sizes[k]`` (the top stage: ``head_kernel_size`` on
            the axes level 0 convolves across).
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
        self._init_topology(feats)
        strides, kernels = self.strides, self.kernel_sizes
        opts = dict(norm=norm, act=act, dropout=dropout, bias=bias)
        chans = (in_channels, *feats)
        self.down = nn.ModuleList(
            ResidualUnit(spatial_dims, chans[k], chans[k + 1], stride=strides[k], kernel_size=kernels[k + 1],
                         subunits=num_res_units, **opts)
            for k in range(self.depth - 1)
        )
        self.bottom = ResidualUnit(spatial_dims, feats[-2], feats[-1], kernel_size=kernels[-1],
                                   subunits=num_res_units, **opts)
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
                    kernel_size=capped(head_kernel_size, kernels[0]) if k == 0 else kernels[k],
                    scale=strides[k],
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
