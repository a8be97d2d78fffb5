"""Post-processing of a predicted label map: the CGM gate and keep-largest-component.

Both only ever *remove* foreground, and both say how much they removed: a filter that silently
deletes a lesion is worse than a false positive, so every case's report carries the counts.

The CGM gate (UNet 3+'s classification-guided module) uses the classifier's "foreground present"
probability — always :func:`monai_ext.networks.cgm_probability`, the probability the CGM loss trains
(the windows' probabilities, mirrored TTA passes averaged as probabilities, come from
:func:`tasks.inference.sliding_window.predict_windows`): for 2D images it is one number per image (the
most confident of its windows: an image holds foreground if any part of it does), for a 2D model run
slice by slice one per slice, and for 3D volumes the Gaussian blend of the windows that cover each
voxel — so foreground inside windows the classifier rejects is removed, and foreground the segmenter
and the classifier agree on stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass
class FilterReport:
    """What a filter removed (JSON-ready): voxels, and for image/slice gates the images or slices."""

    removed_voxels: int = 0
    removed_slices: list[int] = field(default_factory=list)


def gate_images(labels: np.ndarray, probabilities: list[float], threshold: float) -> tuple[np.ndarray, FilterReport]:
    """Per-image/slice gate: ``labels`` is ``X×Y×N`` (N images or slices), one probability per slice."""
    if labels.shape[-1] != len(probabilities):
        raise ValueError(f"{len(probabilities)} probabilities for {labels.shape[-1]} slices")
    report = FilterReport()
    out = labels.copy()
    for index, probability in enumerate(probabilities):
        if probability < threshold:
            removed = int(np.count_nonzero(out[..., index]))
            if removed:
                report.removed_voxels += removed
                report.removed_slices.append(index)
            out[..., index] = 0
    return out, report


def gate_voxels(labels: np.ndarray, presence: np.ndarray, threshold: float) -> tuple[np.ndarray, FilterReport]:
    """Per-window gate in 3D: foreground where the blended presence is below ``threshold`` is removed."""
    if presence.shape != labels.shape:
        raise ValueError(f"presence map {presence.shape} does not match labels {labels.shape}")
    rejected = (presence < threshold) & (labels > 0)
    out = labels.copy()
    out[rejected] = 0
    return out, FilterReport(removed_voxels=int(rejected.sum()))


def keep_largest_component(labels: np.ndarray) -> tuple[np.ndarray, FilterReport]:
    """Per foreground class, keep its largest connected component (full connectivity)."""
    out = labels.copy()
    report = FilterReport()
    for cls in np.unique(labels):
        if cls == 0:
            continue
        components, count = ndimage.label(labels == cls, structure=np.ones((3,) * labels.ndim, bool))
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        drop = (components > 0) & (components != int(sizes.argmax()))
        report.removed_voxels += int(drop.sum())
        out[drop] = 0
    return out, report
