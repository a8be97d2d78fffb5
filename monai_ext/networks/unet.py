"""U-Net (Ronneberger et al., MICCAI 2015), 2D/3D, same or valid padding.

Per level: two 3x3 convs (optional norm, ReLU); 2x2 max-pool down; 2x2 up-convolution (transposed conv)
up; skip concatenation. ``features`` sets depth and widths. ``padding="valid"`` is the paper form
(unpadded convs, centre-cropped skips, output smaller than input: 572 -> 388 for depth 5), used with
overlap-tile inference via :func:`valid_unet_input_size`; ``padding="same"`` (default) keeps the
resolution and pads awkward input sizes (see :mod:`monai_ext.networks.base`).

Paper configuration: ``build_network("unet", 2, 1, 2, features=(64, 128, 256, 512, 1024), norm=None,
padding="valid")`` -> 31,030,658 parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from .base import NetworkConfigError, SegmentationNetwork
from .blocks import ActSpec, BlockFactory, DoubleConv, NormSpec, UpSample, check_features
from .stages import Decoder, Encoder, SegHead, place_dropout
from .topology import capped

__all__ = ["UNet", "valid_unet_input_size", "valid_unet_output_size"]

def _axis_topology(depth: int, strides: Sequence[int] | None, kernels: Sequence[int] | None
                   ) -> tuple[list[int], list[int]]:
    """One axis's (strides, per-level size loss): two unpadded k-wide convs remove 2 * (k - 1) per level."""
    strides = [2] * (depth - 1) if strides is None else [int(s) for s in strides]
    kernels = [3] * depth if kernels is None else [int(k) for k in kernels]
    if len(strides) != depth - 1 or len(kernels) != depth:
        raise ValueError(f"a depth-{depth} U-Net takes {depth - 1} strides and {depth} kernels per axis, "
                         f"got {strides} and {kernels}")
    if any(s < 1 for s in strides) or any(k < 1 or k % 2 == 0 for k in kernels):
        raise ValueError(f"strides must be >= 1 and kernels odd and >= 1, got {strides} and {kernels}")
    return strides, [2 * (k - 1) for k in kernels]


def _valid_output(input_size: int, depth: int, strides: Sequence[int] | None = None,
                  kernels: Sequence[int] | None = None) -> int | None:
    """Output size of a valid-padding U-Net along one axis, or None when ``input_size`` does not fit."""
    steps, losses = _axis_topology(depth, strides, kernels)
    n = int(input_size)
    for stride, loss in zip(steps, losses[:-1], strict=True):
        n -= loss
        if n <= 0 or n % stride:
            return None
        n //= stride
    n -= losses[-1]
    if n <= 0:
        return None
    for stride, loss in zip(reversed(steps), reversed(losses[:-1]), strict=True):
        n = stride * n - loss
    return n if n > 0 else None


def valid_unet_output_size(input_size: int, depth: int, strides: Sequence[int] | None = None,
                           kernels: Sequence[int] | None = None) -> int:
    """Output size of a valid-padding U-Net with ``depth`` levels; ValueError if ``input_size`` doesn't fit.

    A size fits when every map entering a max-pool has a size divisible by its stride (otherwise the pooled
    map and its skip could not be aligned exactly, which the paper avoids by choosing tile sizes). One axis
    at a time: ``strides`` (``depth - 1`` values) and ``kernels`` (``depth`` odd values) are *this axis's*
    entries of the network's ``strides`` / ``kernel_sizes`` (None: 2 and 3, the paper's network). An axis
    with kernel 1 at a level loses no margin there.
    """
    out = _valid_output(input_size, depth, strides, kernels)
    if out is None:
        raise ValueError(
            f"input size {input_size} does not fit a valid-padding U-Net of depth {depth}"
            f"{'' if strides is None and kernels is None else f' (strides {strides}, kernels {kernels})'}; "
            f"nearest valid input sizes: {_neighbours(input_size, depth, strides, kernels)} "
            "(use valid_unet_input_size(output_size, depth) to choose a tile)"
        )
    return out


def valid_unet_input_size(output_size: int, depth: int, strides: Sequence[int] | None = None,
                          kernels: Sequence[int] | None = None) -> int:
    """Input tile size whose valid-padding U-Net output covers ``output_size`` (overlap-tile inference).

    Not every output size is reachable (outputs step by the product of the strides, 2**(depth-1) by
    default), so this returns the input for the smallest reachable output >= ``output_size``; e.g. depth 5:
    388 -> 572 (exact, the paper's tile). ``strides`` / ``kernels``: this axis's, as in
    :func:`valid_unet_output_size`.
    """
    if output_size < 1:
        raise ValueError("output_size must be >= 1")
    steps, losses = _axis_topology(depth, strides, kernels)
    n = 1  # bottleneck size after its two convs; grow until the output is large enough
    while True:
        out = n
        for stride, loss in zip(reversed(steps), reversed(losses[:-1]), strict=True):
            out = stride * out - loss
        if out >= output_size:
            break
        n += 1
    size = n + losses[-1]
    for stride, loss in zip(reversed(steps), reversed(losses[:-1]), strict=True):
        size = stride * size + loss
    return size


def _neighbours(size: int, depth: int, strides: Sequence[int] | None,
                kernels: Sequence[int] | None) -> tuple[int | None, int]:
    lo = int(size)
    while lo > 0 and _valid_output(lo, depth, strides, kernels) is None:
        lo -= 1
    hi = max(int(size), 1)
    while _valid_output(hi, depth, strides, kernels) is None:
        hi += 1
    return (lo if lo > 0 else None), hi


class UNet(SegmentationNetwork):
    """U-Net with configurable depth/widths, norm, padding mode and up-sampling.

    Args:
        features: widths per level, shallow -> deep; ``len(features)`` is the depth (levels incl. bottleneck).
        norm: None (paper), "batch", "instance", "group" (8 groups) or any MONAI norm spec.
        act: MONAI activation spec (ReLU in the paper); convs before a ReLU get He init (paper).
        dropout: dropout rate (0 = off).
        dropout_position: "bottleneck" (once, on the deepest features: the paper's "end of the contracting
            path") or "all" (after every conv).
        bias: conv bias (the paper and the UNet 3+ reference code keep it even with batch norm).
        padding: "same" (default) or "valid" (paper form, output smaller than input).
        upsample: "deconv" (transposed conv, paper) or "nontrainable" (interpolation + 1x1 conv).
        up_kernel_size: transposed-conv kernel; 2 (paper) or 4 (UNet 3+ authors' reference code).
        head_kernel_size: kernel of the output conv; 1 (paper) or 3 (UNet 3+ reference code).
        **common: see :class:`~monai_ext.networks.base.SegmentationNetwork`. Deep-supervision heads (1x1)
            tap decoder stages at 1/2 ... 1/2**(depth-2) resolution (per axis: the levels' ``strides``).
            ``kernel_sizes[i]`` sizes both convs of encoder level i and of the decoder stage at level i;
            the output conv keeps ``head_kernel_size`` only on the axes level 0 convolves across.
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
        padding: str = "same",
        upsample: str = "deconv",
        up_kernel_size: int = 2,
        head_kernel_size: int = 1,
        **common: Any,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, **common)
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        feats = check_features(features)
        self.features = feats
        self.padding = padding
        self.depth = len(feats)
        self._init_topology(feats)
        self.pads_input = padding == "same"

        dropout, self.bottleneck_dropout = place_dropout(spatial_dims, dropout, dropout_position)
        block = self.level_block(
            spatial_dims, norm=norm, act=act, dropout=dropout, bias=bias, padding=padding
        )
        up = partial(UpSample, spatial_dims, mode=upsample, kernel_size=up_kernel_size, bias=bias)
        dec = feats[-2::-1]
        self.encoder = Encoder(spatial_dims, in_channels, feats, block, self.strides, self.kernel_sizes)
        self.decoder = Decoder(feats[-1], dec, dec, up, block, crop_skip=padding == "valid",
                               scales=self.strides[::-1], kernel_sizes=self.kernel_sizes[-2::-1])
        self.head = SegHead(spatial_dims, feats[0], out_channels, capped(head_kernel_size, self.kernel_sizes[0]))
        # aux heads for decoder outputs at levels 1 .. depth-2 (index k -> level k+1), high -> low resolution
        self.aux_heads = (
            nn.ModuleList(
                SegHead(spatial_dims, feats[level], out_channels) for level in range(1, self.depth - 1)
            )
            if self.deep_supervision
            else nn.ModuleList()
        )
        self._init_cgm(feats[-1])

    @classmethod
    def check_config(cls, features: Sequence[int] | None, options: Mapping[str, Any]) -> None:
        """Also refuse deep supervision with ``padding="valid"`` in a pipeline config.

        Why: each valid decoder stage sees a different centred region of the input (deeper stages lose
        fewer voxels), so a head's target is not the main output's target resized, which is what deep-
        supervision losses assume. The constructor still builds such a network for direct use.
        """
        super().check_config(features, options)
        if options.get("padding") == "valid" and options.get("deep_supervision"):
            raise NetworkConfigError("deep_supervision", "deep supervision is not supported with padding 'valid' "
                                     "(model.options.padding: valid): its heads cover other regions than the "
                                     "output; set model.options.deep_supervision: false or padding: same")

    def level_block(self, spatial_dims: int, **options: Any) -> BlockFactory:
        """The per-level block (two convs here); subclasses swap it (residual units in ``res_unet``)."""
        return partial(DoubleConv, spatial_dims, **options)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if self.padding == "valid":
            for axis, size in enumerate(x.shape[2:]):
                valid_unet_output_size(int(size), self.depth, *self.axis_topology(axis))

    def axis_topology(self, axis: int) -> tuple[list[int], list[int]]:
        """(strides, kernels) along spatial ``axis``, as :func:`valid_unet_output_size` takes them."""
        return [s[axis] for s in self.strides], [k[axis] for k in self.kernel_sizes]

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        feats = self.encoder(x)
        # deep -> shallow; outs[-1] is full resolution
        outs = self.decoder(self.bottleneck_dropout(feats[-1]), feats[-2::-1])
        aux: list[torch.Tensor] = []
        if self.wants_aux:
            aux = [head(outs[-2 - k]) for k, head in enumerate(self.aux_heads)]
        return self.head(outs[-1]), aux, feats[-1]
