"""Network topology from the target spacing and the patch: which axes each level pools, and its kernels.

nnU-Net's rule (``get_pool_and_conv_props``), for a network whose depth the user chose (``model.features``:
the papers' widths and parameter counts stay exact). At each downsampling, an axis is pooled only while

- it keeps at least ``MIN_FEATURE_MAP`` voxels afterwards (the patch axis holds ≥ 2 × that), and
- its current spacing is within 2× of the finest current spacing among the poolable axes,

so a 0.7 × 0.7 × 5 mm volume first pools in-plane only, until the in-plane spacing has caught up with z.
Kernels are 3 along an axis once its spacing is within 2× of the finest, 1 before (a 5 mm axis is too coarse
to convolve across at 0.7 mm in-plane); the bottleneck always convolves 3 along every axis, as in nnU-Net.
A level where no axis may pool keeps its resolution (stride 1): nnU-Net would stop adding levels there,
but the depth here is the user's.

Spacings and sizes are per spatial axis of the network (X, Y[, Z]): the dataset's axis order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_FEATURE_MAP = 4  # nnU-Net v2's UNet_featuremap_min_edge_length
ANISOTROPY_FACTOR = 2.0  # an axis more than this × coarser than the finest neither pools nor convolves yet


@dataclass(frozen=True)
class Topology:
    """Per-level strides (``depth - 1`` entries) and kernel sizes (``depth``), one value per axis."""

    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]

    @property
    def divisors(self) -> tuple[int, ...]:
        """What a patch axis must be a multiple of: the product of that axis's strides."""
        dims = len(self.kernel_sizes[0])
        return tuple(math.prod(stride[axis] for stride in self.strides) for axis in range(dims))

    @property
    def poolings(self) -> tuple[int, ...]:
        """How many times each axis is halved (what nnU-Net's plans call ``num_pool_per_axis``)."""
        dims = len(self.kernel_sizes[0])
        return tuple(sum(stride[axis] > 1 for stride in self.strides) for axis in range(dims))

    @property
    def isotropic_default(self) -> bool:
        """True when this is every network's built-in topology (pool 2 and kernel 3 on every axis)."""
        return all(s == 2 for stride in self.strides for s in stride) and \
            all(k == 3 for kernel in self.kernel_sizes for k in kernel)


def plan_topology(spacing: Sequence[float], patch: Sequence[int], depth: int) -> Topology:
    """Strides and kernels for a ``depth``-level network on ``patch`` voxels of ``spacing`` mm (see module doc)."""
    dims = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch]
    kernel = [1] * dims
    strides: list[tuple[int, ...]] = []
    kernels: list[tuple[int, ...]] = []
    for _ in range(depth - 1):
        finest = min(current_spacing)
        kernel = [3 if kernel[axis] == 3 or current_spacing[axis] / finest < ANISOTROPY_FACTOR else 1
                  for axis in range(dims)]
        kernels.append(tuple(kernel))
        pooled = _poolable_axes(current_spacing, current_size)
        stride = tuple(2 if axis in pooled else 1 for axis in range(dims))
        strides.append(stride)
        for axis in pooled:
            current_spacing[axis] *= 2
            current_size[axis] = math.ceil(current_size[axis] / 2)
    kernels.append((3,) * dims)
    return Topology(strides=tuple(strides), kernel_sizes=tuple(kernels))


def _poolable_axes(spacing: list[float], size: list[float]) -> list[int]:
    """nnU-Net's test for one downsampling: large enough, and within 2× of the finest poolable spacing.

    A single poolable axis must hold ≥ 3 × ``MIN_FEATURE_MAP`` voxels (nnU-Net stops there rather than
    make one axis ever thinner while the others stay)."""
    large = [axis for axis in range(len(size)) if size[axis] >= 2 * MIN_FEATURE_MAP]
    if not large:
        return []
    finest = min(spacing[axis] for axis in large)
    axes = [axis for axis in large if spacing[axis] / finest < ANISOTROPY_FACTOR]
    if len(axes) == 1 and size[axes[0]] < 3 * MIN_FEATURE_MAP:
        return []
    return axes


def round_up(patch: Sequence[int], divisors: Sequence[int]) -> tuple[int, ...]:
    """Each axis up to the next multiple of its divisor (nnU-Net's ``pad_shape``): the network needs it."""
    return tuple(max(d, math.ceil(p / d) * d) for p, d in zip(patch, divisors, strict=True))


def fit_topology(spacing: Sequence[float], patch: Sequence[int], depth: int) -> tuple[Topology, tuple[int, ...]]:
    """(topology, patch rounded up to its divisors): the topology is decided on the patch it will run on."""
    topology = plan_topology(spacing, patch, depth)
    rounded = round_up(patch, topology.divisors)
    again = plan_topology(spacing, rounded, depth)  # rounding up can allow one more pooling on an axis
    if again != topology:
        topology, rounded = again, round_up(rounded, again.divisors)
    return topology, rounded
