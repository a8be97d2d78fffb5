"""Small building blocks shared by every architecture in this package.

Everything takes ``spatial_dims`` and builds its layers through MONAI's factories
(``Conv``, ``Pool``, ``Dropout``, ``get_norm_layer``, ``get_act_layer``), so a single code path serves
2D and 3D. Architectures are assembled from these pieces (and the encoder/decoder/heads of
:mod:`.stages`) instead of unrolling layers by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Dropout, split_args
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from .topology import AxisSpec, is_one, same_padding, transposed_geometry

NormSpec = str | tuple | None


ActSpec = str | tuple | None


#: a callable ``(in_channels, out_channels) -> nn.Module`` used by encoders/decoders to build a level.
BlockFactory = Callable[[int, int], nn.Module]


def _normalise_norm(norm: NormSpec) -> NormSpec:
    """Accept ``None``/"none" as "no normalisation" so configs can spell it either way."""
    if norm is None or (isinstance(norm, str) and norm.lower() == "none"):
        return None
    return norm


#: the norm names every variant offers ("none"/None too); MONAI tuple specs pass through as well.
NORMS = ("batch", "instance", "group")
#: GroupNorm groups when a spec names none: 8 (MONAI SegResNet), cut to gcd(channels, 8) so it always divides.
GROUPS = 8


def norm_spec(norm: NormSpec, channels: int) -> NormSpec:
    """Complete a norm spec for ``channels``: plain "group" gets ``num_groups``, which MONAI would demand.

    Batch norm keeps PyTorch's defaults (momentum 0.1, eps 1e-5), never TensorFlow's 0.01/1e-3: with 0.01 the
    running statistics lag the weights for hundreds of steps and eval-mode output drifts from training's.
    """
    norm = _normalise_norm(norm)
    if norm is None:
        return None
    name, args = split_args(norm)
    if name.lower() == "group" and "num_groups" not in args:
        return (name, {**args, "num_groups": math.gcd(channels, GROUPS)})
    return norm


def make_norm(norm: NormSpec, spatial_dims: int, channels: int) -> nn.Module | None:
    """Build a normalisation layer from a MONAI norm spec ("batch", "group", ("group", {...}), ...) or None."""
    norm = norm_spec(norm, channels)
    if norm is None:
        return None
    return get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)


def he_init_(conv: nn.Module, act: nn.Module | None) -> None:
    """He (Kaiming) normal init, zero bias, for a conv whose output a rectifier (ReLU, ReLU6, LeakyReLU) follows.

    Why (U-Net paper, He et al. 2015): a ReLU halves the second moment, so PyTorch's default init shrinks an
    un-normalised U-Net's bottleneck activations to std ~0.01 and slows early training; std sqrt(2/fan_in)
    keeps them O(1). Other activations keep PyTorch's default. Only where the rectifier follows the conv
    directly: with a norm layer in between, the forward scale is normalised away and the init changes only the
    effective learning rate (on the demo's 12-epoch budget, He init under batch norm cost 0.05 test Dice),
    so normalised blocks keep PyTorch's default, as MONAI's networks do.
    """
    if isinstance(act, nn.LeakyReLU):
        nn.init.kaiming_normal_(conv.weight, a=act.negative_slope, nonlinearity="leaky_relu")
    elif isinstance(act, nn.ReLU | nn.ReLU6):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    else:
        return
    if getattr(conv, "bias", None) is not None:
        nn.init.zeros_(conv.bias)


def make_act(act: ActSpec) -> nn.Module | None:
    """Build an activation from a MONAI act spec; ``None`` means identity (used before residual sums)."""
    if act is None:
        return None
    return get_act_layer(act)


def interp_mode(spatial_dims: int) -> str:
    """Linear interpolation mode name for the dimensionality (bilinear in 2D, trilinear in 3D)."""
    return {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]


def add_norm_act_dropout(block: nn.Sequential, spatial_dims: int, channels: int, norm: NormSpec, act: ActSpec,
                         dropout: float) -> None:
    """Append the optional norm → activation → dropout that follows a (transposed) convolution."""
    norm_layer = make_norm(norm, spatial_dims, channels)
    if norm_layer is not None:
        block.add_module("norm", norm_layer)
    act_layer = make_act(act)
    if act_layer is not None:
        block.add_module("act", act_layer)
    if dropout:
        block.add_module("dropout", Dropout[Dropout.DROPOUT, spatial_dims](dropout))


class ConvNormAct(nn.Sequential):
    """conv -> [norm] -> [act] -> [dropout]: the unit every other block is made of (He init before a ReLU)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: AxisSpec = 3,
        stride: AxisSpec = 1,
        padding: AxisSpec | None = None,
        groups: int = 1,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = same_padding(kernel_size)
        conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                                             bias=bias)
        self.add_module("conv", conv)
        add_norm_act_dropout(self, spatial_dims, out_channels, norm, act, dropout)
        if getattr(self, "norm", None) is None:  # a norm in between rescales the output itself (see he_init_)
            he_init_(self.conv, getattr(self, "act", None))


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvNormAct: the U-Net level block. ``padding="valid"`` gives the paper's unpadded convs.

    ``kernel_size`` may differ per axis (a level's ``kernel_sizes`` entry; 1 = no mixing across that axis).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        padding: str = "same",
        kernel_size: AxisSpec = 3,
    ) -> None:
        super().__init__()
        pad = same_padding(kernel_size) if padding == "same" else 0
        for i, cin in enumerate((in_channels, out_channels)):
            unit = ConvNormAct(spatial_dims, cin, out_channels, kernel_size, padding=pad, norm=norm, act=act,
                               dropout=dropout, bias=bias)
            self.add_module(f"conv_{i}", unit)


class ResidualUnit(nn.Module):
    """MONAI's ``ResidualUnit``: ``subunits`` ConvNormAct (the first strided) summed with a shortcut.

    Shortcut: identity when shape is kept, a 1x1 conv when only the width changes, a strided 3x3 conv when
    the unit downsamples (as in MONAI). No activation after the sum; ``last_conv_only`` leaves the last
    subunit a bare conv (MONAI's output unit). Striding the first conv instead of max-pooling first costs the
    same FLOPs for the body and makes the shortcut carry the downsampling (ResUNet, Zhang et al. 2018).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: AxisSpec = 1,
        subunits: int = 2,
        kernel_size: AxisSpec = 3,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        last_conv_only: bool = False,
    ) -> None:
        super().__init__()
        if subunits < 1:
            raise ValueError(f"a residual unit needs >= 1 subunit, got {subunits}")
        layers = []
        cin, s = in_channels, stride
        for i in range(subunits):
            bare = last_conv_only and i == subunits - 1
            layers.append(
                ConvNormAct(
                    spatial_dims,
                    cin,
                    out_channels,
                    kernel_size,
                    stride=s,
                    norm=None if bare else norm,
                    act=None if bare else act,
                    dropout=0.0 if bare else dropout,
                    bias=bias,
                )
            )
            cin, s = out_channels, 1
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if not is_one(stride) or in_channels != out_channels:
            k = 1 if is_one(stride) else kernel_size
            self.shortcut = Conv[Conv.CONV, spatial_dims](
                in_channels, out_channels, k, stride=stride, padding=same_padding(k), bias=bias
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> depthwise 3x3 (stride) -> 1x1 linear projection (+ residual).

    Depthwise convs are grouped convs from the same ``Conv`` factory, so the block works in 3D too; the
    depthwise ``kernel_size`` and ``stride`` may differ per axis.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: AxisSpec = 1,
        expand_ratio: int = 6,
        norm: NormSpec = "batch",
        act: ActSpec = "relu6",
        kernel_size: AxisSpec = 3,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(spatial_dims, in_channels, hidden, 1, norm=norm, act=act, bias=False))
        layers.append(
            ConvNormAct(
                spatial_dims, hidden, hidden, kernel_size, stride=stride, groups=hidden, norm=norm, act=act, bias=False
            )
        )
        layers.append(ConvNormAct(spatial_dims, hidden, out_channels, 1, norm=norm, act=None, bias=False))
        self.body = nn.Sequential(*layers)
        self.use_residual = is_one(stride) and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 (MobileNet decoder block): ~k^d times cheaper than a full conv."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: NormSpec = "batch",
        act: ActSpec = "relu6",
        dropout: float = 0.0,
        kernel_size: AxisSpec = 3,
    ) -> None:
        super().__init__(
            ConvNormAct(
                spatial_dims, in_channels, in_channels, kernel_size, groups=in_channels, norm=norm, act=act,
                bias=False,
            ),
            ConvNormAct(
                spatial_dims, in_channels, out_channels, 1, norm=norm, act=act, dropout=dropout, bias=False
            ),
        )


class UpSample(nn.Module):
    """x``scale`` upsampling: transposed conv (``"deconv"``, kernel ``kernel_size``) or interpolation + 1x1 conv.

    ``kernel_size=2`` is the U-Net paper's 2x2 up-convolution; ``kernel_size=4`` (padding 1) is what the
    UNet 3+ authors' reference code uses for its UNet/UNet++ baselines. Any kernel size gives exactly x2.
    ``scale`` (per axis: the level's ``strides`` entry) undoes that level's pooling; a scale-1 axis gets a
    1-wide kernel, a scale-s one ``kernel_size + s - 2`` (see :func:`~.topology.transposed_geometry`).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        mode: str = "deconv",
        kernel_size: int = 2,
        bias: bool = True,
        scale: AxisSpec = 2,
    ) -> None:
        super().__init__()
        if mode not in ("deconv", "nontrainable"):
            raise ValueError(f"upsample must be 'deconv' or 'nontrainable', got {mode!r}")
        self.spatial_dims = spatial_dims
        self.mode = mode
        scales = (scale,) * spatial_dims if isinstance(scale, int) else tuple(scale)
        # one float when isotropic: the interpolation (and its export) as before per-axis scales existed
        self.scale_factor: float | tuple[float, ...] = (
            float(scales[0]) if len(set(scales)) == 1 else tuple(float(s) for s in scales)
        )
        if mode == "deconv":
            kernels, pads, extra = transposed_geometry(kernel_size, scales)
            conv_t = Conv[Conv.CONVTRANS, spatial_dims]
            self.conv = conv_t(
                in_channels, out_channels, kernels, stride=scales, padding=pads, output_padding=extra, bias=bias
            )
        else:
            self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "deconv":
            return self.conv(x)
        return self.conv(
            F.interpolate(x, scale_factor=self.scale_factor, mode=interp_mode(self.spatial_dims), align_corners=False)
        )


def center_crop(x: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Crop the centre of ``x`` to ``spatial_shape`` (valid mode: skips are larger than the upsampled map)."""
    slices: list[slice] = [slice(None), slice(None)]
    for size, target in zip(x.shape[2:], spatial_shape, strict=True):
        start = (int(size) - int(target)) // 2
        slices.append(slice(start, start + int(target)))
    return x[tuple(slices)]


def resize_to(x: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Bi/trilinear resize to an explicit shape (shapes, not scale factors, so odd sizes can't drift)."""
    if tuple(x.shape[2:]) == tuple(spatial_shape):
        return x
    return F.interpolate(x, size=list(spatial_shape), mode=interp_mode(x.dim() - 2), align_corners=False)


def check_features(
    features: Sequence[int], min_levels: int = 2, max_levels: int | None = None, meaning: str = "one per level"
) -> tuple[int, ...]:
    """Validate a widths-per-level tuple early, with a message that names the option and what it needs."""
    feats = tuple(int(f) for f in features)
    if len(feats) < min_levels or len(feats) > (max_levels or len(feats)) or any(f <= 0 for f in feats):
        count = f"exactly {min_levels}" if max_levels == min_levels else f">= {min_levels}"
        raise ValueError(f"features must be {count} positive widths ({meaning}), got {list(features)!r}")
    return feats
