"""The U-Net paper's weight maps (w_c + w0·exp(−(d1+d2)²/2σ²)), cached on disk.

They are expensive, so each is stored under a key made of the label's sha256 and exactly the
parameters the map depends on: changing ``w0``, ``sigma`` or its units recomputes them, nothing else
does. ``sigma_units: voxels`` (default, the paper's σ = 5 px) measures d1, d2 in voxels and ignores the
header spacing, which then is no part of the key; ``mm`` uses the header spacing (physical distances).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.common.atomic import atomic_path
from tasks.common.hashing import json_digest
from tasks.config import PreprocessConfig

#: Bump when unet_weight_map's output changes, so stale cache entries are not reused.
#: 2: with instance maps, w_c is balanced over the classes (not foreground vs background).
#: 3: distances in voxels by default (preprocess.sigma_units); before, always in header units (mm).
WEIGHT_MAP_VERSION = 3


def distance_spacing(config: PreprocessConfig, spacing: list[float], spatial_dims: int) -> list[float] | None:
    """The voxel size the map's distances use: the header's in ``mm``, None (unit voxels) in ``voxels`` —
    σ in pixels, as in the paper, whatever pixdim a microscope wrote (0.1 mm would make σ = 50 px)."""
    return [float(s) for s in spacing[:spatial_dims]] if config.sigma_units == "mm" else None


def weight_map_key(label_sha256: str, config: PreprocessConfig, spacing: list[float],
                   labels_are_instances: bool = True) -> str:
    """Cache key: the label's hash and exactly the parameters the map depends on, nothing else —
    so normalisation, training or model settings never invalidate the (expensive) weight maps.
    The spacing counts only in ``mm`` (in voxels the map does not depend on it)."""
    used = [float(s) for s in spacing] if config.sigma_units == "mm" else None
    return json_digest({"label": label_sha256, "w0": config.w0, "sigma": config.sigma,
                          "sigma_units": config.sigma_units, "class_weights": config.class_weights, "spacing": used,
                          "instances": labels_are_instances, "version": WEIGHT_MAP_VERSION}, 32)


def cached_weight_map(instances: np.ndarray, label_sha256: str, spacing: list[float],
                      config: PreprocessConfig, cache_dir: Path, spatial_dims: int,
                      labels_are_instances: bool = True, classes: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """The case's weight map from the cache, or computed and stored; returns (map, was_cached).

    ``labels_are_instances=False`` (semantic labels, no instance file) splits each class into connected
    components, so touching objects of one class are only separated where the label shows a gap.
    ``classes`` (the class label beside an instance map) balances ``w_c`` over the classes themselves:
    an instance map alone only knows foreground from background, which would weigh every class alike.
    """

    path = cache_dir / f"{weight_map_key(label_sha256, config, spacing, labels_are_instances)}.npy"
    if path.exists():
        try:
            cached = np.load(path)
        except (OSError, ValueError):  # a damaged entry is recomputed, not trusted
            cached = None
        if cached is not None and cached.shape == instances.shape[:3]:
            return cached, True
    weights = _weight_map(instances, classes, config, spacing, spatial_dims, labels_are_instances)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, weights)
    return weights, False


def _weight_map(objects: np.ndarray, classes: np.ndarray | None, config: PreprocessConfig, spacing: list[float],
                spatial_dims: int, labels_are_instances: bool) -> np.ndarray:
    from monai_ext.transforms.weight_maps import class_weight_map, unet_weight_map

    def squeeze(array: np.ndarray) -> np.ndarray:
        return array[..., 0] if spatial_dims == 2 else array

    class_weights = None if config.class_weights == "none" else config.class_weights
    sampling = distance_spacing(config, spacing, spatial_dims)
    if classes is None or not labels_are_instances:
        weights = unet_weight_map(squeeze(objects), w0=config.w0, sigma=config.sigma, class_weights=class_weights,
                                  spacing=sampling, labels_are_instances=labels_are_instances)
    else:  # border term of the instances (w_c = 0 there), plus w_c of the classes: exactly the sum, in float32
        border = unet_weight_map(squeeze(objects), w0=config.w0, sigma=config.sigma, class_weights={0: 0.0, 1: 0.0},
                                 spacing=sampling, labels_are_instances=True)
        weights = class_weight_map(squeeze(classes), class_weights, labels_are_instances=False) + border
    weights = weights.astype(np.float32)
    return weights[..., None] if spatial_dims == 2 else weights
