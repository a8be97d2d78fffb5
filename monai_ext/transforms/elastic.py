"""The U-Net paper's elastic deformation, one random field shared by image, label and weight map.

Ronneberger et al. (2015): "random displacement vectors on a coarse 3 by 3 grid. The displacements
are sampled from a Gaussian distribution with 10 pixels standard deviation. Per-pixel displacements
are then computed using bicubic interpolation." MONAI's ``Rand2DElasticd``/``Rand3DElasticd`` draw a
dense uniform field smoothed by a Gaussian (and only via a spacing/magnitude parametrisation), so they
do not reproduce this augmentation; this transform does, in 2D and 3D with the same code.

The coarse grid's nodes are placed on the image corners/edges (``grid`` nodes per axis, corner
aligned) and upsampled to full resolution with a cubic spline (the n-D analogue of bicubic, the same
as ``scipy.ndimage.zoom(order=3, mode="mirror")``). Each key is then resampled with
``scipy.ndimage.map_coordinates``: one field for all keys keeps image, label and weight map aligned.

The paper's grid spans the *whole image*, so its strain (displacement per voxel) is about
``sigma_px * (grid - 1) / image_size``. A training pipeline deforms a cropped patch instead (warping
a whole 3D volume per step would cost far more than the patch); laying the 3x3 grid over the patch
would make the nodes ``image / patch`` times closer and the strain that many times larger (3x for a
128 patch of a 512 image). So the grid can span a larger ``extent`` (the whole image's shape) of which
the sample is a window: the field is evaluated only on the window, exactly as if the whole image's
field had been computed and cropped. The spline is separable, so that costs one small matrix per
axis, not a map of the whole image.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, ensure_tuple_rep
from scipy import ndimage

__all__ = ["RandUNetElasticd", "StoreSpatialShaped", "coarse_to_dense_displacement", "interpolation_order", "warp"]

_ORDERS: dict[str, int] = {
    "nearest": 0,
    "linear": 1,
    "bilinear": 1,
    "trilinear": 1,
    "quadratic": 2,
    "cubic": 3,
    "bicubic": 3,
    "tricubic": 3,
}
_PADDING: dict[str, str] = {
    # MONAI/torch names -> scipy names, plus scipy names themselves
    "zeros": "constant",
    "border": "nearest",
    "reflection": "mirror",
    "constant": "constant",
    "nearest": "nearest",
    "mirror": "mirror",
    "reflect": "reflect",
    "wrap": "grid-wrap",
}


def interpolation_order(mode: str | int) -> int:
    """Spline order for a MONAI-style mode name (``"nearest"``, ``"bilinear"``, ``"bicubic"``...) or int."""
    if isinstance(mode, int):
        if not 0 <= mode <= 5:
            raise ValueError(f"spline order must be in 0..5, got {mode}")
        return mode
    try:
        return _ORDERS[mode.lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation mode {mode!r}; known: {sorted(_ORDERS)}") from None


def _axis_weights(nodes: int, extent: int, offset: int, size: int, order: int) -> np.ndarray:
    """``[size, nodes]``: how much each coarse node contributes to each voxel of the window along one axis.

    Node ``0`` sits on voxel ``0`` of the extent, node ``nodes - 1`` on voxel ``extent - 1``; the window
    covers voxels ``offset .. offset + size - 1``. Interpolating the unit vectors gives the (linear)
    spline's weights, so the n-D field is a product of these small matrices.
    """
    coords = (offset + np.arange(size, dtype=np.float64)) * (nodes - 1) / max(extent - 1, 1)
    unit = np.eye(nodes)
    return np.stack(
        [ndimage.map_coordinates(unit[j], coords[None], order=order, mode="mirror") for j in range(nodes)],
        axis=1,
    )


def coarse_to_dense_displacement(
    coarse: np.ndarray,
    spatial_shape: Sequence[int],
    extent: Sequence[int] | None = None,
    offset: Sequence[int] | None = None,
) -> np.ndarray:
    """Upsample a coarse displacement grid ``[ndim, g1, .., gn]`` to ``[ndim, *spatial_shape]``.

    Corner-aligned cubic-spline interpolation: coarse node ``0`` sits on the first voxel and node
    ``g-1`` on the last of ``extent`` (default: the sample itself), as in a 3x3 grid spanning the image.
    With a larger ``extent`` the result is the window at ``offset`` (default 0) of the extent's field:
    the whole image's field, evaluated on the patch only.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    ndim = len(spatial_shape)
    if coarse.shape[0] != ndim or coarse.ndim != ndim + 1:
        raise ValueError(f"coarse field shape {coarse.shape} does not match {ndim}-D image")
    extent = spatial_shape if extent is None else tuple(int(e) for e in extent)
    offset = (0,) * ndim if offset is None else tuple(int(o) for o in offset)
    if len(extent) != ndim or len(offset) != ndim:
        raise ValueError(f"extent {extent} and offset {offset} must have {ndim} entries")
    order = 3 if min(coarse.shape[1:]) > 1 else 0
    dense = coarse.astype(np.float64)
    for axis in range(ndim):
        weights = _axis_weights(coarse.shape[axis + 1], extent[axis], offset[axis], spatial_shape[axis], order)
        dense = np.moveaxis(np.tensordot(weights, np.moveaxis(dense, axis + 1, 0), axes=(1, 0)), 0, axis + 1)
    return np.ascontiguousarray(dense)


def warp(image: np.ndarray, displacement: np.ndarray, order: int = 1, padding: str = "reflect") -> np.ndarray:
    """Resample channel-first ``image [C, *spatial]`` at ``x + displacement(x)`` (pull-back warp)."""
    spatial = image.shape[1:]
    grid = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in spatial], indexing="ij")
    coords = np.stack(grid) + displacement
    out_dtype = image.dtype if order == 0 else np.result_type(image.dtype, np.float32)
    out = np.empty(image.shape, dtype=out_dtype)
    for c in range(image.shape[0]):
        src = image[c] if order == 0 else image[c].astype(out_dtype, copy=False)
        out[c] = ndimage.map_coordinates(
            src, coords, order=order, mode=_PADDING[padding], prefilter=order > 1
        )
    return out


class StoreSpatialShaped(MapTransform):
    """Store the spatial shape of ``key`` (channel-first) under ``shape_key`` as a tuple of ints.

    Why: placed before a random crop, it tells :class:`RandUNetElasticd` (``extent_key``) how large the
    whole image was, so the paper's grid spans the image rather than the patch. Deterministic, so a
    cached dataset computes it once per case.
    """

    def __init__(self, key: str, shape_key: str) -> None:
        super().__init__(key)
        self.shape_key = shape_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        key = self.keys[0]
        d[self.shape_key] = tuple(int(s) for s in d[key].shape[1:])  # type: ignore[attr-defined]
        return d


class RandUNetElasticd(RandomizableTransform, MapTransform):
    """Random U-Net elastic deformation applied with ONE field to all ``keys`` (channel-first data).

    Args:
        keys: keys to deform, e.g. ``("image", "label", "weight")``.
        prob: probability of deforming a sample.
        grid: coarse grid nodes per axis (paper: 3), int or one per axis.
        sigma_px: std of the Gaussian node displacements in voxels of the finest axis (paper: 10).
        mode: interpolation per key, MONAI names (``"bilinear"``, ``"nearest"``, ``"bicubic"``...)
            or spline orders; use ``"nearest"`` for labels so values stay in the label set.
        padding_mode: what lies outside the image, per key (``"reflection"``/``"reflect"``,
            ``"zeros"``/``"constant"``, ``"border"``/``"nearest"``...). Reflection mirrors the
            overlap-tile idea of the paper and avoids empty corners in labels.
        spacing: voxel size per axis, or None (isotropic). The node displacement std along an axis is
            ``sigma_px * min(spacing) / spacing[axis]`` voxels, so the physical displacement is the same
            along every axis (a 5 mm slice axis is not pushed 10 slices when the 0.5 mm plane moves 10 px).
        extent_key: key holding the whole image's spatial shape (see :class:`StoreSpatialShaped`); the
            grid then spans that extent and the sample is a window of it (module docstring). The key is
            removed from the sample. Without it (or when absent) the grid spans the sample itself.
            The window's place in the extent is drawn uniformly, because the crop that cut it does not
            say where it was: the nodes are independent of the image, so this is the field a uniformly
            placed crop of the whole image's field would carry.
    """

    backend = [np.ndarray.__name__, torch.Tensor.__name__]

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        grid: int | Sequence[int] = 3,
        sigma_px: float = 10.0,
        mode: str | int | Sequence[str | int] = "bilinear",
        padding_mode: str | Sequence[str] = "reflect",
        spacing: Sequence[float] | None = None,
        extent_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.grid = grid
        self.sigma_px = float(sigma_px)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        if self.spacing is not None and (not self.spacing or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be positive, got {spacing}")
        self.extent_key = extent_key
        self._offset: tuple[int, ...] | None = None
        self.orders = [interpolation_order(m) for m in ensure_tuple_rep(mode, len(self.keys))]
        self.paddings = list(ensure_tuple_rep(padding_mode, len(self.keys)))
        for p in self.paddings:
            if p not in _PADDING:
                raise ValueError(f"unknown padding_mode {p!r}; known: {sorted(_PADDING)}")
        self._coarse: np.ndarray | None = None

    def _axis_scale(self, ndim: int) -> np.ndarray:
        """Per-axis factor on ``sigma_px``: voxels of the finest axis expressed in each axis' voxels."""
        if self.spacing is None:
            return np.ones(ndim)
        if len(self.spacing) != ndim:
            raise ValueError(f"spacing {self.spacing} does not match a {ndim}-D sample")
        return min(self.spacing) / np.asarray(self.spacing)

    def randomize(  # type: ignore[override]
        self, spatial_shape: Sequence[int], extent: Sequence[int] | None = None
    ) -> None:
        """Decide whether to deform, draw the coarse Gaussian node displacements and the window's place."""
        super().randomize(None)
        self._offset = None
        if not self._do_transform:
            self._coarse = None
            return
        ndim = len(spatial_shape)
        grid = tuple(int(g) for g in ensure_tuple_rep(self.grid, ndim))
        scale = self._axis_scale(ndim).reshape(ndim, *([1] * ndim))
        self._coarse = self.R.normal(0.0, self.sigma_px, size=(ndim, *grid)) * scale
        if extent is not None and tuple(extent) != tuple(spatial_shape):
            self._offset = tuple(int(self.R.randint(0, e - s + 1)) for e, s in zip(extent, spatial_shape, strict=True))

    def _extent(self, d: dict[Hashable, object], spatial_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The whole image's shape (popped from the sample), never smaller than the sample."""
        if self.extent_key is None or self.extent_key not in d:
            return None
        extent = tuple(int(e) for e in d.pop(self.extent_key))  # type: ignore[attr-defined]
        if len(extent) != len(spatial_shape):
            raise ValueError(f"{self.extent_key!r} is {extent}, not a {len(spatial_shape)}-D shape")
        return tuple(max(e, s) for e, s in zip(extent, spatial_shape, strict=True))

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        first = next(self.key_iterator(d), None)
        if first is None:
            if self.extent_key is not None:
                d.pop(self.extent_key, None)
            return d
        spatial_shape = tuple(d[first].shape[1:])  # type: ignore[attr-defined]
        extent = self._extent(d, spatial_shape)
        self.randomize(spatial_shape, extent)
        if self._coarse is None:
            return d
        displacement = coarse_to_dense_displacement(
            self._coarse, spatial_shape, extent if self._offset is not None else None, self._offset
        )
        for key, order, padding in self.key_iterator(d, self.orders, self.paddings):
            value = d[key]
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if tuple(arr.shape[1:]) != spatial_shape:
                raise ValueError(f"{key!r} has spatial shape {arr.shape[1:]}, expected {spatial_shape}")
            out = warp(arr, displacement, order=order, padding=padding)
            d[key] = convert_to_dst_type(out, value, dtype=out.dtype)[0]
        return d
