"""Straightforward reference for the U-Net weight map, kept to validate and benchmark the fast one.

Deliberately shares no distance code with :mod:`monai_ext.transforms.weight_maps`: one whole-image
Euclidean distance transform per object (``O(objects x voxels)``), no truncation. Not for pipelines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage


def naive_unet_weight_map(
    instance_labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: None | str | Mapping[int, float] = "balanced",
    spacing: Sequence[float] | None = None,
    background: int = 0,
    labels_are_instances: bool = True,
) -> np.ndarray:
    """Exact ``w_c + w0 exp(-(d1+d2)^2 / 2 sigma^2)`` (border term on background only), the slow way."""
    labels = np.asarray(instance_labels)
    sampling = None if spacing is None else [float(s) for s in spacing]
    classes = (labels != background).astype(np.int64) if labels_are_instances else labels.astype(np.int64)
    weight = np.ones(labels.shape, dtype=np.float64)
    if class_weights is not None:
        for cls in np.unique(classes):
            mask = classes == cls
            if class_weights == "balanced":
                weight[mask] = labels.size / (len(np.unique(classes)) * mask.sum())
            else:
                weight[mask] = class_weights[int(cls)]  # type: ignore[index]
    # one boolean mask per object
    masks: list[np.ndarray] = []
    if labels_are_instances:
        masks = [labels == v for v in np.unique(labels) if v != background]
    else:
        for cls in np.unique(labels):
            if cls == background:
                continue
            comp, n = ndimage.label(labels == cls)
            masks.extend(comp == i for i in range(1, n + 1))
    if len(masks) < 2:
        return weight.astype(np.float32)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for mask in masks:
        dist = ndimage.distance_transform_edt(~mask, sampling=sampling)
        d2 = np.minimum(d2, np.maximum(d1, dist))
        d1 = np.minimum(d1, dist)
    bg = labels == background
    weight[bg] += w0 * np.exp(-((d1[bg] + d2[bg]) ** 2) / (2.0 * sigma**2))
    return weight.astype(np.float32)
