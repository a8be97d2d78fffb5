"""Resampling to a target spacing the way nnU-Net v2 does it, as plain numpy/scipy functions.

Arrays are channel-first ``(C, *spatial)`` with 2 or 3 spatial axes in the dataset's axis order, and a
spacing is one value in mm per spatial axis. Everything here is a *shape-based* resize with voxel centres
aligned, like ``skimage.transform.resize``: output voxel ``o`` samples input coordinate
``(o + 0.5) · n_in / n_out − 0.5``, so both grids cover the same field of view and going back to the
native shape lands every voxel where it came from. Outside the grid the edge value is repeated
(``mode="edge"`` in skimage, ``"nearest"`` in scipy).

Why each piece is the way it is:

* Same shape → no interpolation at all: a resize to the same shape is the identity by construction, and
  copying keeps the data bit-exact instead of passing it through a spline that returns it ±1 ulp.
* Anisotropic data (thickest spacing over thinnest > 3, nnU-Net's ``ANISO_THRESHOLD``): a spline across
  thick slices invents structure between anatomy that is 5 mm apart and rings at slice boundaries, so the
  in-plane axes get the requested order slice by slice and the thick axis gets nearest (or linear).
* Images: third-order spline, clipped to each channel's input range as skimage's ``clip=True`` does in
  nnU-Net, so a spline never overshoots beyond intensities the scanner produced.
* Class labels: interpolating the integer values would invent classes between neighbours (1 and 3 give
  2), and nearest neighbour drops small objects. Each class's one-hot mask is interpolated linearly and
  every voxel takes the class with the highest membership, so no value that is not in the input appears;
  a class that vanished (an object smaller than a target voxel) is put back where its membership is
  highest, so no class is lost either, and the caller is told which ones were put back.
* Instance ids: nearest neighbour, so ids are kept exactly and none is made up.
* Probabilities back to the native grid: linear in-plane, nearest along the thick axis (nnU-Net's
  ``order=1, order_z=0``); both are convex combinations with the same weights for every channel, so
  values stay in [0, 1] and still sum to 1.

Separable per-axis passes are exact here: scipy's n-D splines are tensor products of 1-D B-splines, so one
axis at a time equals the n-D interpolation, and it lets the thick axis use a different order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ANISO_THRESHOLD = 3.0
"""max(spacing) / min(spacing) above this makes data anisotropic (nnU-Net's ``ANISO_THRESHOLD``)."""

SPACING_RTOL = 1e-3
"""Relative difference under which two spacings count as the same (header rounding, not a real change)."""


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, ...]:
    """Spatial shape after resampling: ``round(shape · spacing / target)``, at least 1 per axis.

    Computed and rounded as nnU-Net's ``compute_new_shape`` does (Python's round, half to even), so plans
    and shapes match nnU-Net's for the same dataset.
    """
    if not len(shape) == len(spacing) == len(target_spacing):
        raise ValueError(f"shape {tuple(shape)}, spacing {tuple(spacing)} and target {tuple(target_spacing)} "
                         "must have one value per spatial axis")
    return tuple(max(1, int(round(s / t * n))) for n, s, t in zip(shape, spacing, target_spacing, strict=True))


def needs_resampling(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float],
                     rtol: float = SPACING_RTOL) -> bool:
    """False when nothing would change: same shape and spacings equal within ``rtol``.

    Callers then skip resampling entirely and keep the data bit-exact; spacings that differ only by header
    rounding (0.69999 vs 0.7) must not trigger an interpolation.
    """
    if tuple(resampled_shape(shape, spacing, target_spacing)) != tuple(shape):
        return True
    return not np.allclose(spacing, target_spacing, rtol=rtol, atol=0.0)


def _anisotropic(spacing: Sequence[float]) -> bool:
    return max(spacing) / min(spacing) > ANISO_THRESHOLD


def resampling_target(shape: Sequence[int], spacing: Sequence[float] | None,
                      target_spacing: Sequence[float] | None) -> tuple[float, ...] | None:
    """``target_spacing`` over ``shape``'s axes when an image of voxel size ``spacing`` must be resampled to
    it; None when either spacing is unknown or the image is already on it (callers then leave it untouched).

    The one place preprocessing and inference decide whether to resample, so a case is never resampled for
    training but left alone at inference (or the other way round)."""
    if spacing is None or target_spacing is None:
        return None
    dims = len(shape)
    native = tuple(float(s) for s in spacing[:dims])
    target = tuple(float(s) for s in target_spacing[:dims])
    return target if needs_resampling(tuple(int(n) for n in shape), native, target) else None


def separate_axis(spacing: Sequence[float], target_spacing: Sequence[float]) -> int | None:
    """The thick axis to resample on its own, or None (nnU-Net's ``get_do_separate_z``/``get_lowres_axis``).

    The current spacing is checked first, then the target spacing; the axis is the one with the largest
    spacing of whichever was anisotropic. When several axes share that largest spacing there is no single
    thick axis, and like nnU-Net v2 everything is then resampled together.
    """
    for candidate in (spacing, target_spacing):
        if _anisotropic(candidate):
            values = np.asarray(candidate, float)
            thickest = np.flatnonzero(values == values.max())
            return int(thickest[0]) if len(thickest) == 1 else None
    return None


def _nearest_axis(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Nearest neighbour along one axis: the input voxel whose extent holds the output voxel's centre."""
    n_in = x.shape[axis]
    index = np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp), n_in - 1)
    return np.take(x, index, axis=axis)


def _linear_axis(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation along one axis, centres aligned, edge value repeated outside the grid."""
    n_in = x.shape[axis]
    coords = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    low = np.floor(coords).astype(np.intp)
    high = np.minimum(low + 1, n_in - 1)
    shape = [1] * x.ndim
    shape[axis] = n_out
    weight = (coords - low).astype(np.float32).reshape(shape)
    out = np.take(x, low, axis=axis).astype(np.float32, copy=False)
    out *= 1 - weight
    out += np.take(x, high, axis=axis) * weight
    return out


def _axis(x: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    if order == 0:
        return _nearest_axis(x, axis, n_out)
    if order == 1:
        return _linear_axis(x, axis, n_out)
    raise ValueError(f"a single-axis pass takes order 0 or 1, not {order}")


def _separable(x: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Order 0/1 one axis at a time, shrinking axes first so intermediates stay small."""
    for axis in sorted(range(x.ndim), key=lambda a: shape[a] / x.shape[a]):
        if x.shape[axis] != shape[axis]:
            x = _axis(x, axis, shape[axis], order)
    return x


def _spline(x: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """B-spline resize of all axes of ``x`` in one scipy call (centres aligned, edge mode), float32 out."""
    scale = np.asarray(x.shape, float) / np.asarray(shape, float)
    return ndimage.affine_transform(x, scale, offset=0.5 * scale - 0.5, output_shape=tuple(shape), order=order,
                                    mode="nearest", output=np.float32)


def _resize(x: np.ndarray, shape: Sequence[int], order: int, order_separate: int, sep: int | None) -> np.ndarray:
    """One channel: in-plane axes with ``order``, the separate axis (if any) afterwards with ``order_separate``."""
    shape = tuple(int(n) for n in shape)
    plane = tuple(x.shape[a] if a == sep else shape[a] for a in range(x.ndim))
    if plane != x.shape:
        if order <= 1:
            x = _separable(x, plane, order)
        elif sep is None:
            x = _spline(x, plane, order)
        else:  # slice by slice along the thick axis, as nnU-Net does: thick slices are never mixed here
            out = np.empty(plane, np.float32)
            sliced = tuple(n for a, n in enumerate(plane) if a != sep)
            for k in range(x.shape[sep]):
                index = (slice(None),) * sep + (k,)
                out[index] = _spline(x[index], sliced, order)
            x = out
    if sep is not None and x.shape[sep] != shape[sep]:
        x = _axis(x, sep, shape[sep], order_separate)
    return x


def _target(array: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float],
            new_shape: Sequence[int] | None) -> tuple[tuple[int, ...], int | None]:
    """Checked output shape and separate axis for a ``(C, *spatial)`` array."""
    spatial = array.shape[1:]
    if array.ndim not in (3, 4):
        raise ValueError(f"expected (C, X, Y) or (C, X, Y, Z), got shape {array.shape}")
    if not len(spacing) == len(target_spacing) == len(spatial):
        raise ValueError(f"spacing {tuple(spacing)} / target {tuple(target_spacing)} do not match spatial shape "
                         f"{spatial}")
    if min(spacing) <= 0 or min(target_spacing) <= 0:
        raise ValueError(f"spacings must be positive: {tuple(spacing)} → {tuple(target_spacing)}")
    shape = resampled_shape(spatial, spacing, target_spacing) if new_shape is None else tuple(int(n) for n in new_shape)
    if len(shape) != len(spatial) or min(shape) < 1:
        raise ValueError(f"new shape {shape} does not fit spatial shape {spatial}")
    return shape, separate_axis(spacing, target_spacing)


def resample_image(image: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float],
                   new_shape: Sequence[int] | None = None, order: int = 3, order_separate: int = 0) -> np.ndarray:
    """Intensities on the target grid, float32, channel by channel (memory: one channel's work at a time).

    ``order`` (spline, default cubic) is used in-plane; on anisotropic data the thick axis gets
    ``order_separate`` (0 nearest as nnU-Net's default, or 1 linear). Spline output is clipped to the
    channel's input range. Same shape → an exact float32 copy.
    """
    shape, sep = _target(image, spacing, target_spacing, new_shape)
    if order_separate not in (0, 1):
        raise ValueError(f"order_separate must be 0 or 1, not {order_separate}")
    if shape == image.shape[1:]:
        return np.array(image, dtype=np.float32, copy=True)
    out = np.empty((image.shape[0], *shape), np.float32)
    for c in range(image.shape[0]):
        channel = np.asarray(image[c], dtype=np.float32)
        out[c] = _resize(channel, shape, order, order_separate, sep)
        if order > 1:
            np.clip(out[c], channel.min(), channel.max(), out=out[c])
    return out


def resample_instances(instances: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float],
                       new_shape: Sequence[int] | None = None) -> np.ndarray:
    """Instance ids by nearest neighbour: ids kept exactly, none made up, dtype kept."""
    shape, _ = _target(instances, spacing, target_spacing, new_shape)
    out = np.empty((instances.shape[0], *shape), instances.dtype)
    for c in range(instances.shape[0]):
        out[c] = _separable(instances[c], shape, 0)
    return out


def resample_probabilities(probabilities: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float],
                           new_shape: Sequence[int]) -> np.ndarray:
    """Softmax outputs from the model grid back to a native grid of exactly ``new_shape``, float32.

    Linear in-plane, nearest along the thick axis (nnU-Net: order 1, order_z 0): values stay in [0, 1] and
    the channels still sum to 1, and the caller's native shape is met even where rounding would differ.
    """
    shape, sep = _target(probabilities, spacing, target_spacing, new_shape)
    if shape == probabilities.shape[1:]:
        return np.array(probabilities, dtype=np.float32, copy=True)
    out = np.empty((probabilities.shape[0], *shape), np.float32)
    for c in range(probabilities.shape[0]):
        out[c] = _resize(np.asarray(probabilities[c], dtype=np.float32), shape, 1, 0, sep)
    return out


def resample_labels(label: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float],
                    new_shape: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Class map on the target grid without creating or losing classes; returns (labels, restored classes).

    Each class's one-hot mask is interpolated (linear, nearest along a thick axis) and each voxel takes the
    class of highest membership (ties: the lower class value). A running max/argmax keeps memory at a few
    volumes whatever the number of classes. Classes present in the input but gone from the output are put
    back, and listed, so callers can report objects smaller than a target voxel.
    """
    shape, sep = _target(label, spacing, target_spacing, new_shape)
    if label.shape[0] != 1:
        raise ValueError(f"a class map has one channel, got shape {label.shape}")
    if shape == label.shape[1:]:
        return label.copy(), []
    source = label[0]
    classes = np.unique(source)
    out = np.empty(shape, label.dtype)
    best = np.full(shape, -1.0, np.float32)
    for value in classes:
        membership = _resize((source == value).astype(np.float32), shape, 1, 0, sep)
        better = membership > best
        np.copyto(out, value, where=better)
        np.maximum(best, membership, out=best)
    del best
    restored = _restore_missing(out, source, classes, sep)
    return out[None], restored


def _restore_missing(out: np.ndarray, source: np.ndarray, classes: np.ndarray, sep: int | None) -> list[int]:
    """Put each vanished class back at one voxel, in place; never removes another class's last voxel.

    The voxel is where the class's interpolated membership is highest; when that is zero everywhere (linear
    down-sampling can step over a single voxel) it is the output voxel holding most of the class's input
    voxel centres.
    """
    values, counts = np.unique(out, return_counts=True)
    count = dict(zip(values.tolist(), counts.tolist(), strict=True))
    missing = [int(v) for v in classes.tolist() if count.get(v, 0) == 0]
    locked = np.zeros(out.shape, bool)
    for value in missing:
        blocked = locked | np.isin(out, [v for v, n in count.items() if n == 1])
        membership = _resize((source == value).astype(np.float32), out.shape, 1, 0, sep)
        membership[blocked] = -1.0
        index = int(np.argmax(membership))
        if membership.flat[index] <= 0:
            index = _forward_voxel(source == value, out.shape, blocked)
        previous = out.flat[index].item()
        count[previous] -= 1
        count[value] = 1
        out.flat[index] = value
        locked.flat[index] = True
    return missing


def _forward_voxel(mask: np.ndarray, shape: tuple[int, ...], blocked: np.ndarray) -> int:
    """Flat index of the unblocked output voxel that holds the most centres of the mask's input voxels."""
    coords = np.nonzero(mask)
    mapped = tuple(np.minimum(np.floor((c + 0.5) * (n_out / n_in)).astype(np.intp), n_out - 1)
                   for c, n_in, n_out in zip(coords, mask.shape, shape, strict=True))
    flat, hits = np.unique(np.ravel_multi_index(mapped, shape), return_counts=True)
    for index in flat[np.argsort(-hits, kind="stable")]:
        if not blocked.flat[index]:
            return int(index)
    free = np.flatnonzero(~blocked)
    if free.size == 0:
        raise ValueError(f"{shape} voxels cannot hold every class of the input")
    centre = np.array([m.mean() for m in mapped])[:, None]
    return int(free[np.argmin(((np.array(np.unravel_index(free, shape)) - centre) ** 2).sum(axis=0))])
