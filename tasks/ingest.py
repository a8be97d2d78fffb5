"""Ingest: a folder of NIfTI image/label pairs → one canonical, validated dataset.

Plain functions (the Prefect flow in ``flows/ingest.py`` only maps them over cases). Each case is
validated on its own and either lands in the canonical folder — RAS orientation, integer labels,
sha256 in the manifest — or is reported with the file and the reason; one bad case never stops
the batch. Writes are atomic and skipped when the bytes would not change, so re-ingesting
unchanged sources rewrites nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from tasks.atomic import atomic_path, write_json

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
GEOMETRY_TOLERANCE = 1e-4
MAX_VOXELS = 2_000_000_000


@dataclass(frozen=True)
class CaseSource:
    case_id: str
    image: Path
    label: Path | None


@dataclass
class CaseResult:
    case_id: str
    accepted: bool
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    written: bool = False


class CaseRejected(Exception):
    """A case that cannot enter the dataset; the message says which file and why."""


def strip_nifti_suffix(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_case_id(raw: str) -> str | None:
    """The case ID if it is safe as a file name and a log token, else None (the case is refused).

    IDs with path separators, ``..``, shell metacharacters, a leading ``-`` or control characters
    could escape the output folder or forge log lines; refusing is clearer than rewriting them.
    """
    if not _SAFE_CASE_ID.match(raw) or ".." in raw:
        return None
    return raw


def discover_cases(images_dir: Path, labels_dir: Path) -> tuple[list[CaseSource], list[CaseResult]]:
    """Pair ``imagesTr/X.nii.gz`` with ``labelsTr/X.nii.gz`` (nnU-Net's ``X_0000`` is accepted too)."""
    sources: list[CaseSource] = []
    problems: list[CaseResult] = []
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    seen: set[str] = set()
    for image in sorted(images_dir.iterdir()):
        stem = strip_nifti_suffix(image.name)
        if stem is None or image.name.startswith("."):
            continue
        case = re.sub(r"_0000$", "", stem)
        case_id = safe_case_id(case)
        if case_id is None:
            problems.append(CaseResult(repr(case), False, f"{image.name}: unsafe case ID {case!r}"))
            continue
        if case_id in seen:
            problems.append(CaseResult(case_id, False, f"{image.name}: duplicate case ID {case_id}"))
            continue
        seen.add(case_id)
        label = next((labels_dir / f"{case_id}{s}" for s in NIFTI_SUFFIXES
                      if (labels_dir / f"{case_id}{s}").exists()), None)
        if label is None:
            problems.append(CaseResult(case_id, False, f"{image.name}: no label in {labels_dir.name}/"))
            continue
        sources.append(CaseSource(case_id, image, label))
    return sources, problems


def _load(path: Path, role: str) -> nib.Nifti1Image:
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for broken headers
        raise CaseRejected(f"{path.name}: unreadable {role} ({error})") from None
    if int(np.prod(image.shape, dtype=np.int64)) > MAX_VOXELS:
        raise CaseRejected(f"{path.name}: header claims {image.shape}, more than {MAX_VOXELS} voxels")
    if len(image.shape) not in (2, 3, 4) or (role == "label" and len(image.shape) == 4
                                             and image.shape[3] != 1):
        raise CaseRejected(f"{path.name}: {role} has {len(image.shape)} dimensions {image.shape}")
    return image


def _as_3d(image: nib.Nifti1Image, path: Path, role: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Canonical (RAS) data as X×Y×Z[×C]; reading a truncated file fails here, not at load."""
    if len(image.shape) == 2:
        image = nib.Nifti1Image(np.asanyarray(image.dataobj)[:, :, None], image.affine, image.header)
    canonical = nib.as_closest_canonical(image)
    try:
        data = np.asanyarray(canonical.dataobj)
    except Exception as error:
        raise CaseRejected(f"{path.name}: {role} data cannot be read ({error})") from None
    if role == "label" and data.ndim == 4:
        data = data[..., 0]
    return data, canonical


def _check_geometry(image: nib.Nifti1Image, label: nib.Nifti1Image, label_path: Path) -> None:
    if image.shape[:3] != label.shape[:3]:
        raise CaseRejected(f"{label_path.name}: label shape {label.shape[:3]} != image shape {image.shape[:3]}")
    if not np.allclose(image.affine, label.affine, atol=GEOMETRY_TOLERANCE, rtol=0):
        raise CaseRejected(
            f"{label_path.name}: label geometry (spacing/origin/direction) differs from the image's "
            f"beyond {GEOMETRY_TOLERANCE}")


def _save_if_changed(data: np.ndarray, affine: np.ndarray, target: Path) -> bool:
    """Write ``data`` to ``target`` unless the file already holds exactly these bytes."""
    image = nib.Nifti1Image(data, affine)
    if target.exists():
        # nibabel writes gzip without a timestamp, so equal data and header give equal bytes.
        if hashlib.sha256(image.to_bytes()).hexdigest() == _sha256_gunzipped(target):
            return False
    with atomic_path(target) as tmp:
        nib.save(image, tmp)
    return True


def _sha256_gunzipped(path: Path) -> str:
    import gzip

    with gzip.open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def ingest_case(source: CaseSource, output_dir: Path, label_names: dict[str, int],
                instance_labels: bool) -> CaseResult:
    """Validate one case and write it, canonical, into ``output_dir``; never raises for bad data."""
    try:
        image_nii = _load(source.image, "image")
        image, image_c = _as_3d(image_nii, source.image, "image")
        if not np.issubdtype(image.dtype, np.number):
            raise CaseRejected(f"{source.image.name}: image voxels are not numbers ({image.dtype})")
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise CaseRejected(f"{source.image.name}: image holds NaN or infinite voxels")
        warnings: list[str] = []
        assert source.label is not None
        label_nii = _load(source.label, "label")
        label, label_c = _as_3d(label_nii, source.label, "label")
        _check_geometry(image_c, label_c, source.label)
        if not np.isfinite(label).all() or not np.all(np.equal(np.mod(label, 1), 0)):
            raise CaseRejected(f"{source.label.name}: label values are not integers")
        label = label.astype(np.int64)
        if label.min() < 0:
            raise CaseRejected(f"{source.label.name}: negative label values")
        if instance_labels:
            instances = label
            classes = (label > 0).astype(np.uint8)
        else:
            allowed = set(label_names.values())
            found = set(np.unique(label).tolist())
            if not found <= allowed:
                raise CaseRejected(f"{source.label.name}: label values {sorted(found - allowed)} "
                                   f"outside the declared classes {sorted(allowed)}")
            instances = None
            classes = label.astype(np.uint8)
        if not classes.any():
            warnings.append(f"{source.label.name}: label is empty (no foreground)")
        affine = image_c.affine
        written = _save_if_changed(image, affine, output_dir / "imagesTr" / f"{source.case_id}.nii.gz")
        written |= _save_if_changed(classes, affine, output_dir / "labelsTr" / f"{source.case_id}.nii.gz")
        if instances is not None:
            written |= _save_if_changed(instances.astype(np.uint16 if instances.max() < 65536 else np.int32),
                                        affine, output_dir / "instancesTr" / f"{source.case_id}.nii.gz")
        spacing = [float(s) for s in image_c.header.get_zooms()[:3]]
        record = {
            "case_id": source.case_id,
            "shape": list(image.shape),
            "spacing": spacing,
            "channels": 1 if image.ndim == 3 else int(image.shape[3]),
            "source": {"image": source.image.name, "label": source.label.name},
            "n_objects": int(len(np.unique(instances)) - 1) if instances is not None else None,
        }
        return CaseResult(source.case_id, True, warnings=warnings, record=record, written=written)
    except CaseRejected as error:
        return CaseResult(source.case_id, False, reason=str(error))


def write_manifest(output_dir: Path, results: list[CaseResult], label_names: dict[str, int],
                   instance_labels: bool, modality: str = "unknown") -> dict:
    """``dataset.json`` (accepted cases with sha256 of each file) and ``rejected.json``."""
    cases = []
    for result in sorted((r for r in results if r.accepted), key=lambda r: r.case_id):
        files = {"image": f"imagesTr/{result.case_id}.nii.gz", "label": f"labelsTr/{result.case_id}.nii.gz"}
        if instance_labels:
            files["instances"] = f"instancesTr/{result.case_id}.nii.gz"
        sha = {role: sha256_file(output_dir / rel) for role, rel in files.items()}
        cases.append({**result.record, "files": files, "sha256": sha, "warnings": result.warnings})
    manifest = {
        "name": "unetflow-dataset",
        "modality": modality,
        "labels": label_names,
        "instance_labels": instance_labels,
        "num_cases": len(cases),
        "cases": cases,
    }
    write_json(output_dir / "dataset.json", manifest)
    rejected = [asdict(r) | {"record": None} for r in results if not r.accepted]
    write_json(output_dir / "rejected.json", {"rejected": [
        {"case_id": r["case_id"], "reason": r["reason"]} for r in rejected]})
    _remove_stale(output_dir, {c["case_id"] for c in cases})
    return manifest


def _remove_stale(output_dir: Path, keep: set[str]) -> None:
    """Cases no longer in the source (or now rejected) must not linger in the canonical folder."""
    for folder in ("imagesTr", "labelsTr", "instancesTr"):
        for path in (output_dir / folder).glob("*.nii.gz"):
            if strip_nifti_suffix(path.name) not in keep:
                path.unlink()
