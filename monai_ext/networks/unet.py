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

__all__ = ["UNet", "valid_unet_input_size", "valid_unet_output_size"]

_VALID_LOSS = 4  # two unpadded 3x3 convs remove 2 pixels each side per level


def _valid_output(input_size: int, depth: int) -> int | None:
    """Output size of a valid-padding U-Net, or None when ``input_size`` does not fit."""
    n = int(input_size)
    for _ in range(depth - 1):
        n -= _VALID_LOSS
        if n <= 0 or n % 2:
            return None
        n //= 2
    n -= _VALID_LOSS
    if n <= 0:
        return None
    for _ in range(depth - 1):
        n = 2 * n - _VALID_LOSS
    return n if n > 0 else None


def valid_unet_output_size(input_size: int, depth: int) -> int:
    """Output size of a valid-padding U-Net with ``depth`` levels; ValueError if ``input_size`` doesn't fit.

    A size fits when every map entering a 2x2 max-pool has even size (otherwise the pooled map and its
    skip could not be aligned exactly, which the paper avoids by choosing tile sizes).
    """
    out = _valid_output(input_size, depth)
    if out is None:
        raise ValueError(
            f"input size {input_size} does not fit a valid-padding U-Net of depth {depth}; "
            f"nearest valid input sizes: {_neighbours(input_size, depth)} "
            "(use valid_unet_input_size(output_size, depth) to choose a tile)"
        )
    return out


def valid_unet_input_size(output_size: int, depth: int) -> int:
    """Input tile size whose valid-padding U-Net output covers ``output_size`` (overlap-tile inference).

    Not every output size is reachable (outputs step by 2**(depth-1)), so this returns the input for the
    smallest reachable output >= ``output_size``; e.g. depth 5: 388 -> 572 (exact, the paper's tile).
    """
    if output_size < 1:
        raise ValueError("output_size must be >= 1")
    n = 1  # bottleneck size after its two convs; grow until the output is large enough
    while True:
        out = n
        for _ in range(depth - 1):
            out = 2 * out - _VALID_LOSS
        if out >= output_size:
            break
        n += 1
    size = n + _VALID_LOSS
    for _ in range(depth - 1):
        size = 2 * size + _VALID_LOSS
    return size


def _neighbours(size: int, depth: int) -> tuple[int | None, int]:
    lo = int(size)
    while lo > 0 and _valid_output(lo, depth) is None:
        lo -= 1
    hi = max(int(size), 1)
    while _valid_output(hi, depth) is None:
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
            tap decoder stages at 1/2 ... 1/2**(depth-2) resolution.
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
        self.size_divisor = 2 ** (self.depth - 1)
        self.pads_input = padding == "same"

        dropout, self.bottleneck_dropout = place_dropout(spatial_dims, dropout, dropout_position)
        block = self.level_block(
            spatial_dims, norm=norm, act=act, dropout=dropout, bias=bias, padding=padding
        )
        up = partial(UpSample, spatial_dims, mode=upsample, kernel_size=up_kernel_size, bias=bias)
        dec = feats[-2::-1]
        self.encoder = Encoder(spatial_dims, in_channels, feats, block)
        self.decoder = Decoder(feats[-1], dec, dec, up, block, crop_skip=padding == "valid")
        self.head = SegHead(spatial_dims, feats[0], out_channels, head_kernel_size)
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
            for size in x.shape[2:]:
                valid_unet_output_size(int(size), self.depth)

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        feats = self.encoder(x)
        # deep -> shallow; outs[-1] is full resolution
        outs = self.decoder(self.bottleneck_dropout(feats[-1]), feats[-2::-1])
        aux: list[torch.Tensor] = []
        if self.wants_aux:
            aux = [head(outs[-2 - k]) for k, head in enumerate(self.aux_heads)]
        return self.head(outs[-1]), aux, feats[-1]
