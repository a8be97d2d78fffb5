"""The U-Net paper's elastic deformation, one random field shared by image, label and weight map.

Ronneberger et al. (2015): "random displacement vectors on a coarse 3 by 3 grid. The displacements
are sampled from a Gaussian distribution with 10 pixels standard deviation. Per-pixel displacements
are then computed using bicubic interpolation." MONAI's ``Rand2DElasticd``/``Rand3DElasticd`` draw a
dense uniform field smoothed by a Gaussian (and only via a spacing/magnitude parametrisation), so they
do not reproduce this augmentation; this transform does, in 2D and 3D with the same code.

The coarse grid's nodes are placed on the image corners/edges (``grid`` nodes per axis, corner
aligned) and upsampled to full resolution with a cubic spline (``scipy.ndimage.zoom(order=3)``), the
n-D analogue of bicubic. Each key is then resampled with ``scipy.ndimage.map_coordinates``: one field
for all keys keeps image, label and weight map aligned.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, ensure_tuple_rep
from scipy import ndimage

__all__ = ["RandUNetElasticd", "coarse_to_dense_displacement", "interpolation_order", "warp"]

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


def coarse_to_dense_displacement(coarse: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
    """Upsample a coarse displacement grid ``[ndim, g1, .., gn]`` to ``[ndim, *spatial_shape]``.

    Corner-aligned cubic-spline interpolation: coarse node ``0`` sits on the first voxel and node
    ``g-1`` on the last, as in a 3x3 grid spanning the image.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    ndim = len(spatial_shape)
    if coarse.shape[0] != ndim or coarse.ndim != ndim + 1:
        raise ValueError(f"coarse field shape {coarse.shape} does not match {ndim}-D image")
    zoom = [s / g for s, g in zip(spatial_shape, coarse.shape[1:], strict=True)]
    order = 3 if min(coarse.shape[1:]) > 1 else 0
    dense = np.stack(
        [
            ndimage.zoom(c, zoom, order=order, mode="mirror", grid_mode=False)
            for c in coarse.astype(np.float64)
        ]
    )
    if dense.shape[1:] != spatial_shape:  # zoom rounds the output shape; guard against off-by-one
        raise RuntimeError(f"upsampled field has shape {dense.shape[1:]}, expected {spatial_shape}")
    return dense


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


class RandUNetElasticd(RandomizableTransform, MapTransform):
    """Random U-Net elastic deformation applied with ONE field to all ``keys`` (channel-first data).

    Args:
        keys: keys to deform, e.g. ``("image", "label", "weight")``.
        prob: probability of deforming a sample.
        grid: coarse grid nodes per axis (paper: 3), int or one per axis.
        sigma_px: std of the Gaussian node displacements in voxels (paper: 10).
        mode: interpolation per key, MONAI names (``"bilinear"``, ``"nearest"``, ``"bicubic"``...)
            or spline orders; use ``"nearest"`` for labels so values stay in the label set.
        padding_mode: what lies outside the image, per key (``"reflection"``/``"reflect"``,
            ``"zeros"``/``"constant"``, ``"border"``/``"nearest"``...). Reflection mirrors the
            overlap-tile idea of the paper and avoids empty corners in labels.
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
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.grid = grid
        self.sigma_px = float(sigma_px)
        self.orders = [interpolation_order(m) for m in ensure_tuple_rep(mode, len(self.keys))]
        self.paddings = list(ensure_tuple_rep(padding_mode, len(self.keys)))
        for p in self.paddings:
            if p not in _PADDING:
                raise ValueError(f"unknown padding_mode {p!r}; known: {sorted(_PADDING)}")
        self._coarse: np.ndarray | None = None

    def randomize(self, spatial_shape: Sequence[int]) -> None:  # type: ignore[override]
        """Decide whether to deform and draw the coarse Gaussian node displacements."""
        super().randomize(None)
        if not self._do_transform:
            self._coarse = None
            return
        ndim = len(spatial_shape)
        grid = tuple(int(g) for g in ensure_tuple_rep(self.grid, ndim))
        self._coarse = self.R.normal(0.0, self.sigma_px, size=(ndim, *grid))

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        first = next(self.key_iterator(d), None)
        if first is None:
            return d
        spatial_shape = tuple(d[first].shape[1:])  # type: ignore[attr-defined]
        self.randomize(spatial_shape)
        if self._coarse is None:
            return d
        displacement = coarse_to_dense_displacement(self._coarse, spatial_shape)
        for key, order, padding in self.key_iterator(d, self.orders, self.paddings):
            value = d[key]
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if tuple(arr.shape[1:]) != spatial_shape:
                raise ValueError(f"{key!r} has spatial shape {arr.shape[1:]}, expected {spatial_shape}")
            out = warp(arr, displacement, order=order, padding=padding)
            d[key] = convert_to_dst_type(out, value, dtype=out.dtype)[0]
        return d
