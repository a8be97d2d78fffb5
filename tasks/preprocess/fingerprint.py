"""The dataset fingerprint (per-case spacings and shapes, summarised) and the target spacing it implies.

As in nnU-Net v2 (``ExperimentPlanner.determine_fullres_target_spacing``) the target spacing is the median
spacing per axis, except on anisotropic data: when the coarsest axis's median spacing is more than
``ANISOTROPY_THRESHOLD`` × the other axes' and its median voxel count is more than that factor smaller, the
median would throw away most of the in-plane resolution of the finely sliced cases, so that axis takes the
10th percentile of its spacings instead (never finer than the other axes' target).

Preprocessing resamples every case to it (``tasks.imaging.resampling``) and inference resamples back. The
median shape the patch is planned from is the one the cases will have *after* resampling
(``median_shape_resampled``; nnU-Net's ``new_median_shape``), measured on each case's bounding box of
non-zero voxels where the intensity pass found it (nnU-Net's shapes after cropping; cases are not cropped
here, so the patch is only sized by it). Spacings are in mm and shapes in voxels, both in the dataset's
(RAS) axis order, as ``dataset.json`` holds them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.imaging.resampling import resampled_shape

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net v2's ``anisotropy_threshold``
_FINER_MARGIN = 1e-5  # nnU-Net: the coarse axis stays (just) coarser than the others


def case_spacings_and_shapes(manifest: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(spacings, shapes), one row per case over the three spatial axes; None when a case has no spacing
    (hand-made manifests in tests), so planning still works without a fingerprint."""
    cases = manifest.get("cases") or []
    if not cases or any(len(case.get("spacing") or []) < 3 for case in cases):
        return None
    spacings = np.array([[float(s) for s in case["spacing"][:3]] for case in cases])
    shapes = np.array([[int(s) for s in case["shape"][:3]] for case in cases])
    return spacings, shapes


def fingerprint(spacings: np.ndarray, shapes: np.ndarray) -> dict[str, Any]:
    """The summary the plan records, so a reader sees why the target spacing is what it is."""
    return {"num_cases": int(len(spacings)),
            "spacing": {"median": [float(v) for v in np.median(spacings, axis=0)],
                        "min": [float(v) for v in spacings.min(axis=0)],
                        "max": [float(v) for v in spacings.max(axis=0)]},
            "median_shape": [float(v) for v in np.median(shapes, axis=0)]}


def median_resampled_shape(spacings: np.ndarray, shapes: np.ndarray, target: tuple[float, ...]) -> list[float]:
    """The median case shape once resampled to ``target`` (each case: round(shape × spacing / target))."""
    resampled = np.array([resampled_shape(shape, spacing, target) for shape, spacing in zip(shapes, spacings,
                                                                                           strict=True)])
    resampled[shapes == 1] = 1  # a 2D image's single slice stays one slice
    return [float(v) for v in np.median(resampled, axis=0)]


def choose_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> list[float]:
    """nnU-Net v2's target spacing: per-axis medians, the coarse axis of anisotropic data at its 10th percentile.

    On 2D data (every Z == 1) only the in-plane axes are weighed; the Z spacing stays its median, since a
    single slice has no slice spacing to resample."""
    target = np.median(spacings, axis=0)
    axes = [0, 1] if np.all(shapes[:, 2] == 1) else [0, 1, 2]
    sizes = np.median(shapes, axis=0)
    coarse = max(axes, key=lambda axis: target[axis])
    others = [axis for axis in axes if axis != coarse]
    other_spacing = max(target[axis] for axis in others)
    aniso_spacing = target[coarse] > ANISOTROPY_THRESHOLD * other_spacing
    aniso_voxels = sizes[coarse] * ANISOTROPY_THRESHOLD < min(sizes[axis] for axis in others)
    if aniso_spacing and aniso_voxels:
        p10 = float(np.percentile(spacings[:, coarse], 10))
        target[coarse] = p10 if p10 >= other_spacing else other_spacing + _FINER_MARGIN
    return [float(v) for v in target]


def plan_spacing(manifest: dict, override: tuple[float, ...] | None,
                 nonzero_shapes: dict[str, list[int]] | None = None) -> tuple[tuple[float, ...] | None,
                                                                          dict[str, Any] | None]:
    """(target spacing, fingerprint) for the plan; ``preprocess.target_spacing`` replaces the chosen value.

    ``nonzero_shapes`` (case ID → non-zero bounding-box shape) replaces those cases' shapes in the median
    shape the patch is planned from; the target spacing is chosen from the whole images, as nnU-Net does."""
    if override is not None and (len(override) != 3 or any(v <= 0 for v in override)):
        raise ValueError(f"preprocess.target_spacing {list(override)} must be three positive mm values (X, Y, Z)")
    found = case_spacings_and_shapes(manifest)
    if found is None:
        return (tuple(override) if override is not None else None), None
    spacings, shapes = found
    chosen = tuple(float(v) for v in (override if override is not None else choose_target_spacing(spacings, shapes)))
    summary = fingerprint(spacings, shapes)
    ids = [case["case_id"] for case in manifest["cases"]]
    rows = [i for i, case_id in enumerate(ids) if case_id in (nonzero_shapes or {})]
    if rows:  # the cases the intensity pass saw (training cases) stand for the dataset
        assert nonzero_shapes is not None
        cropped = np.array([[int(v) for v in nonzero_shapes[ids[i]][:3]] for i in rows])
        summary["median_nonzero_shape"] = [float(v) for v in np.median(cropped, axis=0)]
        summary["median_shape_resampled"] = median_resampled_shape(spacings[rows], cropped, chosen)
    else:
        summary["median_shape_resampled"] = median_resampled_shape(spacings, shapes, chosen)
    return chosen, summary
