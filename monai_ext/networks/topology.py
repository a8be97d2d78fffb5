"""Per-level strides and kernel sizes (``strides`` / ``kernel_sizes``): normalising, checking, deriving.

Why: hospital CT/MR voxels are anisotropic (e.g. 0.7 x 0.7 x 5 mm). Pooling the thick axis as often as the
fine ones, or convolving across slices 5 mm apart with a 3-wide kernel from the first level on, wastes the
network's capacity on a few slices; nnU-Net and MONAI's ``DynUNet`` therefore plan, per level, a
downsampling factor and a kernel size *per axis*. Every variant in this package takes the same two options:

* ``strides``: one entry per downsampling (``len(features) - 1``; eff_unet: its five), the factor from
  level i to level i + 1 on each axis; the decoder upsamples by the same factor at that level. An int
  means that value on every axis; 1 leaves an axis unpooled at that level.
* ``kernel_sizes``: one entry per resolution level (``len(strides) + 1``), the conv kernel per axis of
  every convolution at that level (encoder and decoder alike); odd, so "same" padding is ``k // 2``.
  1 on an axis means no mixing across it at that level (a thick-slice z axis).

``None`` means the isotropic defaults (2 and 3 everywhere); built from them every network is exactly the
one it was before the options existed (same layers, parameters and ``state_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral
from typing import Any

#: a per-axis value as configs give it: one int for every axis, or one int per axis
AxisSpec = int | Sequence[int]
#: a normalised per-axis value: one int per spatial axis
Axes = tuple[int, ...]

DEFAULT_STRIDE = 2
DEFAULT_KERNEL = 3


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_entries(option: str, values: Sequence[Any], length: int, spatial_dims: int | None = None) -> None:
    """Refuse a ``strides``/``kernel_sizes`` list that does not fit: ValueError saying what would.

    ``length`` is the number of entries the network needs; ``spatial_dims`` (None: not known yet, as in a
    config check) is the length every per-axis entry must have. Per-axis entries must agree with each
    other in any case. Kernels must be odd (even kernels have no centred "same" padding).
    """
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ValueError(f"{option} must be a list with one entry per level, got {values!r}")
    if len(values) != length:
        raise ValueError(f"{option} needs {length} entries for this network, got {len(values)}: {list(values)!r}")
    lengths = set()
    for entry in values:
        axes = [entry] if _is_int(entry) else entry
        if not _is_int(entry):
            if isinstance(entry, str | bytes) or not isinstance(entry, Sequence):
                raise ValueError(f"{option} entries must be an int or one int per axis, got {entry!r}")
            lengths.add(len(entry))
        if not axes or any(not _is_int(v) or v < 1 for v in axes):
            raise ValueError(f"{option} entries must be positive ints, got {entry!r}")
        if option == "kernel_sizes" and any(v % 2 == 0 for v in axes):
            raise ValueError(f"kernel_sizes must be odd on every axis (1, 3, 5, ...), got {entry!r}")
    wanted = {spatial_dims} if spatial_dims is not None else lengths
    if len(lengths | wanted) > 1 or not lengths <= {2, 3}:
        per_axis = f"{spatial_dims} values" if spatial_dims is not None else "2 (2D) or 3 (3D) values, all alike"
        raise ValueError(f"{option} entries given per axis need {per_axis}, got {list(values)!r}")


def normalise(option: str, values: Sequence[AxisSpec] | None, length: int, spatial_dims: int) -> tuple[Axes, ...]:
    """``values`` as ``length`` per-axis tuples (None: the isotropic default of ``option``), checked."""
    if values is None:
        default = DEFAULT_STRIDE if option == "strides" else DEFAULT_KERNEL
        return ((default,) * spatial_dims,) * length
    check_entries(option, values, length, spatial_dims)
    return tuple((int(v),) * spatial_dims if _is_int(v) else tuple(int(a) for a in v) for v in values)


def scales(strides: Sequence[Axes]) -> list[Axes]:
    """Resolution factor of every level per axis: ``scales[i]`` = product of ``strides[:i]`` (level 0: 1s)."""
    out = [tuple(1 for _ in strides[0])] if strides else []
    for stride in strides:
        out.append(tuple(a * s for a, s in zip(out[-1], stride, strict=True)))
    return out


def scale_between(strides: Sequence[Axes], shallow: int, deep: int) -> Axes:
    """Per-axis factor from level ``shallow`` down to level ``deep`` (UNet 3+'s full-scale skips)."""
    return tuple(math.prod(axis) for axis in zip(*strides[shallow:deep], strict=True))


def same_padding(kernel: AxisSpec) -> int | Axes:
    """"Same" padding of an odd kernel (``k // 2`` per axis); an int stays an int (unchanged layers)."""
    return kernel // 2 if _is_int(kernel) else tuple(k // 2 for k in kernel)


def is_one(stride: AxisSpec) -> bool:
    """Whether ``stride`` leaves every axis as it is (no downsampling at all)."""
    return stride == 1 if _is_int(stride) else all(s == 1 for s in stride)


def capped(kernel: int, level_kernel: Axes) -> Axes:
    """``kernel`` on the axes ``level_kernel`` convolves across, 1 where the level keeps axes apart.

    Why: heads and fixed-size convs (UNet 3+'s 3x3 output conv, EfficientNet's 3/5 depthwise kernels) keep
    their own size, but must not mix across an axis the plan keeps apart at that level (thick slices).
    """
    return tuple(kernel if k > 1 else 1 for k in level_kernel)


def transposed_geometry(kernel: int, scale: Axes) -> tuple[Axes, Axes, Axes]:
    """(kernel, padding, output_padding) per axis of a transposed conv that upsamples exactly by ``scale``.

    ``kernel`` is the size at scale 2 (2: the U-Net paper's up-convolution, 4 or 3: other reference codes);
    a scale-s axis gets ``kernel + s - 2`` (kernel = stride for the paper's 2, nnU-Net's rule) and a scale-1
    axis a 1-wide kernel: there is nothing to upsample there. Output = input * s on every axis.
    """
    kernels, pads, extra = [], [], []
    for s in scale:
        k = 1 if s == 1 else kernel + s - 2
        overlap = k - s  # = 2 * padding - output_padding, with 0 <= output_padding < s
        pads.append(max(0, (overlap + 1) // 2))
        extra.append(2 * pads[-1] - overlap)
        kernels.append(k)
    return tuple(kernels), tuple(pads), tuple(extra)
