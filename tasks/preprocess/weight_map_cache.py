"""The U-Net paper's weight maps (w_c + w0·exp(−(d1+d2)²/2σ²)), cached on disk.

They are expensive, so each is stored under a key made of the label's sha256 and exactly the
parameters the map depends on: changing ``w0`` or ``sigma`` recomputes them, nothing else does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.common.atomic import atomic_path
from tasks.common.hashing import json_digest
from tasks.config import PreprocessConfig

WEIGHT_MAP_VERSION = 1  # bump when unet_weight_map's output changes, so stale cache entries are not reused


def weight_map_key(label_sha256: str, config: PreprocessConfig, spacing: list[float],
                   labels_are_instances: bool = True) -> str:
    """Cache key: the label's hash and exactly the parameters the map depends on, nothing else —
    so normalisation, training or model settings never invalidate the (expensive) weight maps."""
    return json_digest({"label": label_sha256, "w0": config.w0, "sigma": config.sigma,
                          "class_weights": config.class_weights, "spacing": spacing,
                          "instances": labels_are_instances, "version": WEIGHT_MAP_VERSION}, 32)


def cached_weight_map(instances: np.ndarray, label_sha256: str, spacing: list[float],
                      config: PreprocessConfig, cache_dir: Path, spatial_dims: int,
                      labels_are_instances: bool = True) -> tuple[np.ndarray, bool]:
    """The case's weight map from the cache, or computed and stored; returns (map, was_cached).

    ``labels_are_instances=False`` (semantic labels, no instance file) splits each class into connected
    components, so touching objects of one class are only separated where the label shows a gap.
    """
    from monai_ext.transforms.weight_maps import unet_weight_map

    path = cache_dir / f"{weight_map_key(label_sha256, config, spacing, labels_are_instances)}.npy"
    if path.exists():
        try:
            cached = np.load(path)
        except (OSError, ValueError):  # a damaged entry is recomputed, not trusted
            cached = None
        if cached is not None and cached.shape == instances.shape[:3]:
            return cached, True
    squeezed = instances[..., 0] if spatial_dims == 2 else instances
    weights = unet_weight_map(
        squeezed, w0=config.w0, sigma=config.sigma,
        class_weights=None if config.class_weights == "none" else config.class_weights,
        spacing=spacing[:spatial_dims], labels_are_instances=labels_are_instances,
    ).astype(np.float32)
    weights = weights[..., None] if spatial_dims == 2 else weights
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, weights)
    return weights, False
