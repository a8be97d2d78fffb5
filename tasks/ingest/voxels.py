"""Voxel types and label values: integer images stay exact, labels keep their classes.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from tasks.common.errors import CaseRejected
from tasks.ingest.index import IngestSettings


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder voxels to the closest RAS orientation (no resampling: values are kept exactly)."""
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return np.asanyarray(canonical.dataobj), canonical.affine


#: Integer voxel types a canonical image is stored in, narrowest first.
INTEGER_TYPES = (np.uint8, np.int16, np.uint16, np.int32)


def narrowest_integer(data: np.ndarray) -> np.ndarray | None:
    """The voxels in the narrowest of ``INTEGER_TYPES`` that holds them exactly (None: none does).

    GDCM returns int32 for a CT stored as 16-bit unsigned with RescaleIntercept −1024 (the stored
    type's range, shifted, no longer fits int16) although the voxels span −1024…3071: int16 halves
    the file, the gzip time and every later read, and changes no value.
    """
    if data.size == 0:
        return data
    low, high = int(data.min()), int(data.max())
    for kind in INTEGER_TYPES:
        limits = np.iinfo(kind)
        if limits.min <= low and high <= limits.max:
            return data if np.dtype(kind).itemsize >= data.dtype.itemsize else data.astype(kind)
    return None


def image_dtype(data: np.ndarray, name: str) -> np.ndarray:
    """Integer images stay integers, exactly (DICOM → NIfTI keeps every value); the rest become float32."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise CaseRejected(f"{name}: image voxels are not real numbers ({data.dtype})", code="voxel_type")
    if np.issubdtype(data.dtype, np.integer) and (narrow := narrowest_integer(data)) is not None:
        return narrow
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise CaseRejected(f"{name}: image holds {int((~np.isfinite(data)).sum())} NaN or infinite voxels",
                           code="voxel_type")
    return data


def label_values(label: np.ndarray) -> set[int]:
    """The distinct values of a non-negative integer label: one counting pass, no sort.

    ``np.unique`` sorts (and first flattens) the whole volume — seconds for a CT — while class labels
    are small integers that ``bincount`` tallies in one pass over the voxels as they lie in memory.
    """
    if label.size == 0:
        return set()
    top = int(label.max())
    if top >= 1 << 20:
        return set(np.unique(label).tolist())
    return set(np.flatnonzero(np.bincount(label.ravel(order="K"), minlength=top + 1)).tolist())


def label_arrays(label: np.ndarray, name: str, settings: IngestSettings, instances: np.ndarray | None = None,
                 instances_name: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """(class label, instance map or None), with every label value kept as the class it was declared.

    Classes are never merged or renumbered: a value outside ``settings.label_names`` refuses the case.
    Instance maps are only ever an explicit input: ``instances`` (from ``instancesTr/``, checked against
    the label), or the label itself when ``settings.instance_labels`` says labels are instance maps of
    one class (then class 1 where > 0, the ids kept).
    """
    if settings.instance_labels:
        return (label > 0).astype(np.uint8), _instance_dtype(label)
    classes = label.astype(np.uint8 if len(settings.label_names) <= 256 else np.uint16)
    allowed = set(settings.label_names.values())  # 0..N-1 (checked when resolved): a range test is enough
    if label.size and int(label.max()) >= len(allowed):
        found = label_values(label)
        raise CaseRejected(f"{name}: label values {sorted(found - allowed)[:10]} outside the declared classes "
                           f"{sorted(allowed)} ({_named(settings.label_names)})", code="label_values")
    if instances is None:
        return classes, None
    check_instances(classes, instances, instances_name)
    return classes, _instance_dtype(instances)


def _named(label_names: dict[str, int]) -> str:
    return ", ".join(f"{value} {name}" for name, value in sorted(label_names.items(), key=lambda item: item[1]))


def _instance_dtype(instances: np.ndarray) -> np.ndarray:
    top = int(instances.max()) if instances.size else 0
    return instances.astype(np.uint16 if top < 65536 else np.int32)


def check_instances(classes: np.ndarray, instances: np.ndarray, name: str) -> None:
    """An instance map must cover exactly the label's foreground, and each instance lie inside one class:
    otherwise the weight maps would separate objects the label does not have (or merge classes)."""
    foreground = classes > 0
    differ = int(np.count_nonzero(foreground != (instances > 0)))
    if differ:
        raise CaseRejected(f"{name}: instance map disagrees with the label's foreground ({differ} voxel(s) are "
                           f"foreground in one and background in the other)", code="instances")
    ids = instances[foreground].astype(np.int64)
    pairs = np.unique(ids * (int(classes.max(initial=0)) + 1) + classes[foreground])
    owners, counts = np.unique(pairs // (int(classes.max(initial=0)) + 1), return_counts=True)
    mixed = owners[counts > 1].tolist()
    if mixed:
        raise CaseRejected(f"{name}: instance(s) {mixed[:10]} span more than one class", code="instances")
