"""Encoder, decoder and heads: the segmentation_models_pytorch split, built from :mod:`.blocks`.

An architecture is an encoder (levels of a block factory, pooled between levels), a decoder (upsample,
concatenate the skip, a block) and a head (1×1 convolution to classes, plus the optional CGM classifier).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from monai.networks.layers.factories import Conv, Dropout, Pool
from torch import nn

from .blocks import BlockFactory, center_crop
from .topology import AxisSpec, same_padding

#: where ``dropout`` goes: "bottleneck" (U-Net paper: end of the contracting path) or "all" (after every conv).
DROPOUT_POSITIONS = ("bottleneck", "all")


def place_dropout(spatial_dims: int, dropout: float, position: str = "bottleneck") -> tuple[float, nn.Module]:
    """Split ``dropout`` into (rate after every block conv, module applied once to the bottleneck output).

    Why: the U-Net paper drops out at the end of the contracting path, as implicit augmentation of the
    deepest, most abstract features; dropping after every conv (``"all"``, this package's old behaviour)
    also thins the high-resolution maps that carry the boundaries. The module is an Identity at rate 0.
    """
    if position not in DROPOUT_POSITIONS:
        raise ValueError(f"dropout_position must be one of {', '.join(DROPOUT_POSITIONS)}, got {position!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if position == "all" or not dropout:
        return dropout, nn.Identity()
    return 0.0, Dropout[Dropout.DROPOUT, spatial_dims](dropout)


def level_blocks(block: BlockFactory, channels: Sequence[tuple[int, int]],
                 kernel_sizes: Sequence[AxisSpec] | None) -> list[nn.Module]:
    """``block(cin, cout)`` per (cin, cout), with ``kernel_size=kernel_sizes[i]`` when kernels are given."""
    if kernel_sizes is None:
        return [block(cin, cout) for cin, cout in channels]
    return [block(cin, cout, kernel_size=k) for (cin, cout), k in zip(channels, kernel_sizes, strict=True)]


class Encoder(nn.Module):
    """Plain U-Net encoder: level 0 = block(in, f0); level i = max-pool -> block(f_{i-1}, f_i).

    The pool from level i to i + 1 has kernel (= stride) ``strides[i]`` (2 on every axis by default; a
    1 leaves that axis alone) and level i's block gets ``kernel_size=kernel_sizes[i]`` when given.
    Returns the feature map of every level (shallow -> deep); the last one is the bottleneck.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: Sequence[int],
        block: BlockFactory,
        strides: Sequence[AxisSpec] | None = None,
        kernel_sizes: Sequence[AxisSpec] | None = None,
    ) -> None:
        super().__init__()
        strides = (2,) * (len(features) - 1) if strides is None else strides
        self.pools = nn.ModuleList(Pool[Pool.MAX, spatial_dims](kernel_size=tuple(s) if isinstance(s, Sequence)
                                                                else s) for s in strides)
        chans = [in_channels, *features]
        self.levels = nn.ModuleList(level_blocks(block, list(itertools.pairwise(chans)), kernel_sizes))
        self.out_channels = tuple(features)

    def forward(self, x: torch.Tensor, num_levels: int | None = None) -> list[torch.Tensor]:
        """Run the first ``num_levels`` levels (all by default; fewer for pruned UNet++ inference)."""
        feats: list[torch.Tensor] = []
        for i, level in enumerate(self.levels):
            if num_levels is not None and i >= num_levels:
                break
            x = level(x if i == 0 else self.pools[i - 1](x))
            feats.append(x)
        return feats

    def finish(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """The bottleneck from level ``start - 1``'s map: the remaining levels only (a pruned UNet++'s CGM)."""
        for i in range(start, len(self.levels)):
            x = self.levels[i](self.pools[i - 1](x))
        return x


class DecoderStage(nn.Module):
    """Upsample the deeper map, fit it to the skip (crop the skip in valid mode), concatenate, convolve."""

    def __init__(self, up: nn.Module, block: nn.Module, crop_skip: bool = False) -> None:
        super().__init__()
        self.up = up
        self.block = block
        self.crop_skip = crop_skip

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            if self.crop_skip:
                skip = center_crop(skip, x.shape[2:])
            x = torch.cat([skip, x], dim=1)
        return self.block(x)


class Decoder(nn.Module):
    """U-Net decoder: one :class:`DecoderStage` per level, deep -> shallow.

    ``skip_channels[i]`` is the channel count of the skip at decoder stage i (0 = no skip, used by encoders
    like EfficientNet without a full-resolution feature map). ``scales[i]`` / ``kernel_sizes[i]`` (None: the
    factories' defaults) are stage i's upsampling factor (``up(cin, cout, scale=...)``, the stride of the
    level it returns to) and its block's kernel. Returns the output of every stage, deep -> shallow, so
    deep-supervision heads can tap them.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: Sequence[int],
        out_channels: Sequence[int],
        up: Callable[[int, int], nn.Module],
        block: BlockFactory,
        crop_skip: bool = False,
        scales: Sequence[AxisSpec] | None = None,
        kernel_sizes: Sequence[AxisSpec] | None = None,
    ) -> None:
        super().__init__()
        stages = []
        cin = in_channels
        for i, (skip, cout) in enumerate(zip(skip_channels, out_channels, strict=True)):
            upsample = up(cin, cout) if scales is None else up(cin, cout, scale=scales[i])
            (conv,) = level_blocks(block, [(skip + cout, cout)], None if kernel_sizes is None else [kernel_sizes[i]])
            stages.append(DecoderStage(upsample, conv, crop_skip))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        for stage, skip in zip(self.stages, skips, strict=True):
            x = stage(x, skip)
            outs.append(x)
        return outs


class SegHead(nn.Sequential):
    """Logit head: a single conv to ``out_channels`` (1x1 by default; UNet 3+ uses 3x3; may differ per axis)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: AxisSpec = 1) -> None:
        super().__init__()
        self.add_module(
            "conv",
            Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, padding=same_padding(kernel_size)),
        )


class CGMHead(nn.Module):
    """Classification-guided module (UNet 3+): dropout -> 1x1 conv to 2 -> global max pool -> [B, 2] logits.

    Unlike the reference code, no sigmoid/argmax here: returning logits keeps the classifier trainable
    (the CGM loss); what they mean, for the loss and every gate alike, is
    :func:`~monai_ext.networks.outputs.cgm_probability`.
    """

    def __init__(self, spatial_dims: int, in_channels: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, 2, 1)
        self.pool = Pool[Pool.ADAPTIVEMAX, spatial_dims](1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.conv(self.dropout(x))), 1)
