"""One case: read and validate its image and label, write the canonical files, or reject it by name.

``ingest_case`` never raises for bad data: a ``CaseRejected`` becomes a rejected ``CaseResult`` with the
file and the reason, so one bad case never stops the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

from tasks.common.errors import CaseRejected
from tasks.common.hashing import sha256_file
from tasks.common.names import printable
from tasks.imaging.dicom_series import check_series, read_seg, read_volume
from tasks.imaging.geometry import check_same_grid
from tasks.imaging.nifti_reader import Role, describe_error, read_nifti
from tasks.imaging.nifti_writer import save_nifti_gz
from tasks.ingest.index import IngestSettings, fingerprint
from tasks.ingest.sources import CaseSource
from tasks.ingest.voxels import image_dtype, label_arrays, label_values, to_ras


@dataclass
class CaseResult:
    case_id: str
    accepted: bool
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    written: bool = False
    unchanged: bool = False
    fingerprint: str = ""
    code: str = ""  # why it was rejected, machine-readable (tasks.common.errors.REASON_CODES)

    def __post_init__(self) -> None:
        # Reasons quote file names; escaping here means no hostile name can forge a log line later.
        self.reason = printable(self.reason)
        self.warnings = [printable(w) for w in self.warnings]


def load_nifti(path: Path, name: str, role: Role, settings: IngestSettings) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (X×Y×Z[×C]) and RAS affine of a NIfTI file, after every check that needs no guessing.

    :func:`~tasks.imaging.nifti_reader.read_nifti` checks the header before any voxel is read (an
    absurd size fails fast without allocating it, a short uncompressed file is called truncated);
    for ingest the geometry must also read the same in nibabel and SimpleITK.
    """
    volume = read_nifti(path, name, role=role, max_voxels=settings.max_voxels, geometry_tolerance=settings.tolerance)
    return volume.data, volume.affine


def read_image(source: CaseSource, settings: IngestSettings) -> tuple[np.ndarray, np.ndarray, Any]:
    """(RAS voxels X×Y×Z[×C], RAS affine, the checked DICOM series or None)."""
    if source.kind == "dicom":
        series = check_series(list(source.slices), source.name, settings.spacing_tolerance, settings.max_voxels)
        if len(series.files) == 1 and settings.spatial_dims != 2:  # its slice spacing would be invented
            raise CaseRejected(f"{source.name(series.files[0])}: a series of one slice is not a volume; a 2D "
                               f"dataset of single slices must be declared (data.spatial_dims: 2)", code="dimensions")
        data = read_volume(series, source.name, settings.tolerance,
                           convert=lambda voxels: image_dtype(voxels, source.name(series.files[0])))
        data, affine = to_ras(data, series.affine)
        return data, affine, series
    channels = []
    for index, path in enumerate(source.images):
        data, affine = load_nifti(path, source.name(path), "image", settings)
        data = image_dtype(data, source.name(path))
        if channels:
            check_same_grid(channels[0][0].shape, channels[0][1], data.shape, affine, settings.tolerance,
                            f"channel {index}", source.name(path))
            if data.ndim != 3:
                raise CaseRejected(f"{source.name(path)}: channel file is {data.ndim}D; channel files must be 3D",
                                   code="channels")
        channels.append((data, affine))
    if len(channels) == 1:
        data, affine = channels[0]
    else:
        dtype = np.result_type(*(c[0].dtype for c in channels))
        data, affine = np.stack([c[0].astype(dtype) for c in channels], axis=3), channels[0][1]
    data, affine = to_ras(data, affine)
    return data, affine, None


def read_label(source: CaseSource, series: Any, image_shape: tuple[int, ...], image_affine: np.ndarray,
               settings: IngestSettings, which: Literal["label", "instances"] = "label") -> np.ndarray:
    """Integer label (or, ``which="instances"``, instance map) on the image's RAS grid; any geometry
    mismatch is a rejection, never a resample."""
    path = source.label if which == "label" else source.instances
    assert path is not None
    name, what = source.name(path), "label" if which == "label" else "instance map"
    code = "label_values" if which == "label" else "instances"
    if which == "label" and source.label_kind == "seg":
        data, affine = to_ras(read_seg(path, series, source.name), series.affine)
    else:
        data, affine = to_ras(*load_nifti(path, name, "label", settings))
    check_same_grid(image_shape, image_affine, data.shape, affine, settings.tolerance, what, name)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise CaseRejected(f"{name}: {what} holds NaN or infinite values", code=code)
        if not np.all(np.equal(np.mod(data, 1), 0)):
            raise CaseRejected(f"{name}: {what} values are not integers", code=code)
    elif not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
        raise CaseRejected(f"{name}: {what} voxels are not numbers ({data.dtype})", code=code)
    if not np.issubdtype(data.dtype, np.integer):  # floats holding integers, or bool; integer labels stay as they are
        data = data.astype(np.int64)
    if data.size and data.min() < 0:
        raise CaseRejected(f"{name}: negative {what} values {sorted(set(np.unique(data[data < 0]).tolist()))[:5]}",
                           code=code)
    return data


def _outputs_intact(output_dir: Path, record: dict) -> bool:
    try:
        return all(sha256_file(output_dir / rel) == record["sha256"][role] for role, rel in record["files"].items())
    except (OSError, KeyError, TypeError):
        return False


def ingest_case(source: CaseSource, output_dir: Path, settings: IngestSettings,
                previous: dict | None = None) -> CaseResult:
    """Validate one case and write it, canonical, into ``output_dir``; never raises for bad data.

    ``previous`` is this case's entry in the last run's index: when the inputs' fingerprint is the
    same and the outputs are intact, the last result is returned without reading anything else.
    """
    try:
        inputs_fingerprint = fingerprint(source, settings)
    except OSError as error:
        return CaseResult(source.case_id, False,
                          f"{source.name(source.image)}: cannot read input ({describe_error(error)})",
                          code="unreadable")
    if previous and previous.get("fingerprint") == inputs_fingerprint and (
            not previous.get("accepted") or _outputs_intact(output_dir, previous.get("record") or {})):
        return CaseResult(source.case_id, bool(previous["accepted"]), previous.get("reason", ""),
                          list(previous.get("warnings", [])), dict(previous.get("record") or {}),
                          written=False, unchanged=True, fingerprint=inputs_fingerprint,
                          code=previous.get("code", ""))
    try:
        image, affine, series = read_image(source, settings)
        if source.label is None:
            raise CaseRejected(source.missing_label or f"{source.name(source.image)}: no label", code="no_label")
        label = read_label(source, series, image.shape, affine, settings)
        label_name = source.name(source.label) if source.label else "label"
        given = read_label(source, series, image.shape, affine, settings, "instances") if source.instances else None
        classes, instances = label_arrays(label, label_name, settings, given,
                                          source.name(source.instances) if source.instances else "")
        warnings = [] if classes.any() else [f"{label_name}: label is empty (no foreground)"]
        files = {"image": f"imagesTr/{source.case_id}.nii.gz", "label": f"labelsTr/{source.case_id}.nii.gz"}
        arrays = {"image": image, "label": classes}
        if instances is not None:
            files["instances"] = f"instancesTr/{source.case_id}.nii.gz"
            arrays["instances"] = instances
        saved = {role: save_nifti_gz(arrays[role], affine, output_dir / rel) for role, rel in files.items()}
        spacing = [float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)]
        record: dict[str, Any] = {
            "case_id": source.case_id,
            "shape": list(image.shape),
            "spacing": spacing,
            "origin": [round(float(v), 6) for v in affine[:3, 3]],
            "orientation": "".join(nib.aff2axcodes(affine)),
            "channels": 1 if image.ndim == 3 else int(image.shape[3]),
            "dtype": str(image.dtype),
            "source": _source_record(source),
            "n_objects": len(label_values(instances) - {0}) if instances is not None else None,
            "files": files,
            "sha256": {role: digest for role, (digest, _) in saved.items()},
        }
        if source.kind == "dicom":
            record["dicom"] = dict(source.allowed_tags)
        return CaseResult(source.case_id, True, warnings=warnings, record=record,
                          written=any(written for _, written in saved.values()),
                          fingerprint=inputs_fingerprint)
    except CaseRejected as error:
        return CaseResult(source.case_id, False, reason=str(error), fingerprint=inputs_fingerprint, code=error.code)
    except MemoryError:
        return CaseResult(source.case_id, False, f"{source.name(source.image)}: too large to load",
                          fingerprint=inputs_fingerprint, code="memory")


def _source_record(source: CaseSource) -> dict[str, Any]:
    if source.kind == "dicom":  # no paths: DICOM folder names are too often patient names
        return {"kind": "dicom", "slices": len(source.images), "label": source.label_kind}
    names = [source.name(p) for p in source.images]
    record = {"kind": "nifti", "image": names[0], "images": names,
              "label": source.name(source.label) if source.label else None}
    if source.instances is not None:
        record["instances"] = source.name(source.instances)
    return record
