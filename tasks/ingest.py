"""Ingest: an inbox of NIfTI or DICOM studies → one canonical, validated, DVC-versioned dataset.

Plain functions (the Prefect flow in ``flows/ingest.py`` only maps ``ingest_case`` over cases).
``plan_ingest`` finds the cases (``tasks/sources.py``) and what the last run made of them;
``ingest_case`` validates one case and writes it — RAS NIfTI image, integer label — or rejects it
with the file and the reason; ``finish_ingest`` writes ``dataset.json`` (sha256 of every file),
``rejected.json`` and the source index. One bad case never stops the batch.

Idempotent and incremental: each case's inputs are fingerprinted (sha256 of every input file and
the settings); an unchanged case whose outputs are intact is not read again, and any file that
would get the same bytes is not rewritten. Every write is atomic, so a run killed half-way leaves
whole files only, and the next run ends with exactly the dataset an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tasks.atomic import write_json
from tasks.checksums import sha256_file
from tasks.config import DataConfig
from tasks.dicom_series import check_series, read_seg, read_volume
from tasks.geometry import check_readers_agree, check_same_grid, nifti_affine
from tasks.ingest_errors import CaseRejected
from tasks.ingest_names import printable, safe_case_id
from tasks.nifti_gzip import save_nifti_gz
from tasks.sources import NIFTI_SUFFIXES, CaseSource, discover, strip_nifti_suffix

__all__ = ["CaseRejected", "CaseResult", "CaseSource", "IngestPlan", "IngestSettings", "finish_ingest",
           "ingest_case", "ingest_dataset", "plan_ingest", "safe_case_id", "sha256_file", "summary_table"]

#: Bump when the output of an unchanged input would change, so the index does not skip it.
INGEST_VERSION = 3
INDEX_FILE = "sources.json"
OUTPUT_FOLDERS = ("imagesTr", "labelsTr", "instancesTr")


@dataclass(frozen=True)
class IngestSettings:
    """What validating a case depends on (a plain value, so it maps cheaply onto workers)."""

    label_names: dict[str, int]
    instance_labels: bool
    tolerance: float = 1e-4
    spacing_tolerance: float = 0.01
    max_voxels: int = 1_000_000_000

    @classmethod
    def from_config(cls, data: DataConfig) -> IngestSettings:
        return cls(dict(data.label_names), data.instance_labels, data.geometry_tolerance,
                   data.slice_spacing_tolerance, data.max_voxels)

    def key(self) -> str:
        payload = json.dumps({"version": INGEST_VERSION, "labels": self.label_names,
                              "instances": self.instance_labels, "tolerance": self.tolerance,
                              "spacing": self.spacing_tolerance, "max_voxels": self.max_voxels}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


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

    def __post_init__(self) -> None:
        # Reasons quote file names; escaping here means no hostile name can forge a log line later.
        self.reason = printable(self.reason)
        self.warnings = [printable(w) for w in self.warnings]


def fingerprint(source: CaseSource, settings: IngestSettings) -> str:
    """Content of every input (not paths: they may name the patient) plus the settings."""
    images = [sha256_file(p) for p in source.images]
    if source.kind == "dicom":
        images.sort()  # slice order comes from the headers, not from file names
    payload = {"kind": source.kind, "label_kind": source.label_kind, "settings": settings.key(),
               "images": images, "label": sha256_file(source.label) if source.label else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- reading


def _reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return printable(f"{type(error).__name__}: {text}"[:160])


def load_nifti(path: Path, name: str, role: str, settings: IngestSettings) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (X×Y×Z[×C]) and RAS affine of a NIfTI file, after every check that needs no guessing.

    The header is checked before any voxel is read: an absurd size fails fast without allocating
    it, a short uncompressed file is called truncated, and the geometry must read the same in
    nibabel and SimpleITK.
    """
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for broken headers
        raise CaseRejected(f"{name}: unreadable {role} ({_reason(error)})") from None
    if not isinstance(image, nib.Nifti1Image):
        raise CaseRejected(f"{name}: {role} is not a NIfTI-1 file ({type(image).__name__})")
    shape = tuple(int(s) for s in image.shape)
    if any(s <= 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) > settings.max_voxels:
        raise CaseRejected(f"{name}: header claims {role} shape {shape}, refused (limit {settings.max_voxels} voxels)")
    if len(shape) not in (2, 3, 4) or (role == "label" and len(shape) == 4 and shape[3] != 1):
        raise CaseRejected(f"{name}: {role} has {len(shape)} dimensions {shape}; expected 2D, 3D"
                           f"{' or 4D (channels last)' if role == 'image' else ''}")
    if path.name.endswith(".nii"):
        needed = int(getattr(image.dataobj, "offset", 352)) + int(np.prod(shape)) * image.get_data_dtype().itemsize
        if path.stat().st_size < needed:
            raise CaseRejected(f"{name}: truncated {role} file ({path.stat().st_size} bytes, header needs {needed})")
    affine = nifti_affine(image, name, settings.tolerance)
    check_readers_agree(path, image, name, settings.tolerance)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # zlib/EOF errors: a truncated or corrupt .nii.gz
        raise CaseRejected(f"{name}: {role} data is truncated or corrupt ({_reason(error)})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    if role == "label" and data.ndim == 4:
        data = data[..., 0]
    return data, affine


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder voxels to the closest RAS orientation (no resampling: values are kept exactly)."""
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return np.asanyarray(canonical.dataobj), canonical.affine


#: Integer voxel types a canonical image is stored in, narrowest first.
INTEGER_TYPES = (np.uint8, np.int16, np.uint16, np.int32)


def _narrowest_integer(data: np.ndarray) -> np.ndarray | None:
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


def _image_dtype(data: np.ndarray, name: str) -> np.ndarray:
    """Integer images stay integers, exactly (DICOM → NIfTI keeps every value); the rest become float32."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise CaseRejected(f"{name}: image voxels are not real numbers ({data.dtype})")
    if np.issubdtype(data.dtype, np.integer) and (narrow := _narrowest_integer(data)) is not None:
        return narrow
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise CaseRejected(f"{name}: image holds {int((~np.isfinite(data)).sum())} NaN or infinite voxels")
    return data


def read_image(source: CaseSource, settings: IngestSettings) -> tuple[np.ndarray, np.ndarray, Any]:
    """(RAS voxels X×Y×Z[×C], RAS affine, the DICOM series plan or None)."""
    if source.kind == "dicom":
        plan = check_series(list(source.slices), source.name, settings.spacing_tolerance, settings.max_voxels)
        data = read_volume(plan, source.name, settings.tolerance,
                           convert=lambda voxels: _image_dtype(voxels, source.name(plan.files[0])))
        data, affine = to_ras(data, plan.affine)
        return data, affine, plan
    channels = []
    for index, path in enumerate(source.images):
        data, affine = load_nifti(path, source.name(path), "image", settings)
        data = _image_dtype(data, source.name(path))
        if channels:
            check_same_grid(channels[0][0].shape, channels[0][1], data.shape, affine, settings.tolerance,
                            f"channel {index}", source.name(path))
            if data.ndim != 3:
                raise CaseRejected(f"{source.name(path)}: channel file is {data.ndim}D; channel files must be 3D")
        channels.append((data, affine))
    if len(channels) == 1:
        data, affine = channels[0]
    else:
        dtype = np.result_type(*(c[0].dtype for c in channels))
        data, affine = np.stack([c[0].astype(dtype) for c in channels], axis=3), channels[0][1]
    data, affine = to_ras(data, affine)
    return data, affine, None


def read_label(source: CaseSource, plan: Any, image_shape: tuple[int, ...], image_affine: np.ndarray,
               settings: IngestSettings) -> np.ndarray:
    """Integer label on the image's RAS grid; any geometry mismatch is a rejection, never a resample."""
    assert source.label is not None
    name = source.name(source.label)
    if source.label_kind == "seg":
        data, affine = to_ras(read_seg(source.label, plan, source.name), plan.affine)
    else:
        data, affine = to_ras(*load_nifti(source.label, name, "label", settings))
    check_same_grid(image_shape, image_affine, data.shape, affine, settings.tolerance, "label", name)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise CaseRejected(f"{name}: label holds NaN or infinite values")
        if not np.all(np.equal(np.mod(data, 1), 0)):
            raise CaseRejected(f"{name}: label values are not integers")
    elif not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
        raise CaseRejected(f"{name}: label voxels are not numbers ({data.dtype})")
    if not np.issubdtype(data.dtype, np.integer):  # floats holding integers, or bool; integer labels stay as they are
        data = data.astype(np.int64)
    if data.size and data.min() < 0:
        raise CaseRejected(f"{name}: negative label values {sorted(set(np.unique(data[data < 0]).tolist()))[:5]}")
    return data


# --------------------------------------------------------------------------------------------- writing


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


def _label_arrays(label: np.ndarray, name: str, settings: IngestSettings) -> tuple[np.ndarray, np.ndarray | None]:
    if settings.instance_labels:
        top = int(label.max()) if label.size else 0
        return (label > 0).astype(np.uint8), label.astype(np.uint16 if top < 65536 else np.int32)
    allowed = set(settings.label_names.values())  # 0..N-1 (the schema checks): a range test is enough
    if label.size and int(label.max()) < len(allowed):
        return label.astype(np.uint8), None
    found = label_values(label)
    if not found <= allowed:
        raise CaseRejected(f"{name}: label values {sorted(found - allowed)[:10]} outside the declared classes "
                           f"{sorted(allowed)}")
    return label.astype(np.uint8), None


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
        print_ = fingerprint(source, settings)
    except OSError as error:
        return CaseResult(source.case_id, False, f"{source.name(source.image)}: cannot read input ({_reason(error)})")
    if previous and previous.get("fingerprint") == print_ and (
            not previous.get("accepted") or _outputs_intact(output_dir, previous.get("record") or {})):
        return CaseResult(source.case_id, bool(previous["accepted"]), previous.get("reason", ""),
                          list(previous.get("warnings", [])), dict(previous.get("record") or {}),
                          written=False, unchanged=True, fingerprint=print_)
    try:
        image, affine, plan = read_image(source, settings)
        if source.label is None:
            raise CaseRejected(source.missing_label or f"{source.name(source.image)}: no label")
        label = read_label(source, plan, image.shape, affine, settings)
        label_name = source.name(source.label) if source.label else "label"
        classes, instances = _label_arrays(label, label_name, settings)
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
                          fingerprint=print_)
    except CaseRejected as error:
        return CaseResult(source.case_id, False, reason=str(error), fingerprint=print_)
    except MemoryError:
        return CaseResult(source.case_id, False, f"{source.name(source.image)}: too large to load", fingerprint=print_)


def _source_record(source: CaseSource) -> dict[str, Any]:
    if source.kind == "dicom":  # no paths: DICOM folder names are too often patient names
        return {"kind": "dicom", "slices": len(source.images), "label": source.label_kind}
    names = [source.name(p) for p in source.images]
    return {"kind": "nifti", "image": names[0], "images": names,
            "label": source.name(source.label) if source.label else None}


# --------------------------------------------------------------------------------------------- the batch


@dataclass
class IngestPlan:
    kind: str
    sources: list[CaseSource]
    problems: list[CaseResult]
    previous: list[dict | None]
    modality: str


def plan_ingest(raw: Path, output_dir: Path, data: DataConfig) -> IngestPlan:
    """Discover the cases, clear leftovers of a killed run, and recall what the last run made of each."""
    _remove_temporaries(output_dir)
    found = discover(raw, data)
    problems = [CaseResult(case_id, False, reason) for case_id, reason in found.problems]
    index = _read_index(output_dir)
    modality = data.modality if data.modality != "auto" else (found.modality or "unknown")
    return IngestPlan(found.kind, found.sources, problems, [index.get(s.case_id) for s in found.sources],
                      modality)


def finish_ingest(output_dir: Path, plan: IngestPlan, case_results: Iterable[CaseResult],
                  settings: IngestSettings) -> tuple[dict, list[CaseResult]]:
    """Write ``dataset.json``, ``rejected.json`` and the index; drop outputs of cases no longer accepted."""
    results = sorted([*plan.problems, *case_results], key=lambda r: (r.case_id, r.reason))
    accepted = [r for r in results if r.accepted]
    counts = Counter(r.record["channels"] for r in accepted)
    if len(counts) > 1:  # preprocess builds one network input: every case needs the same channels
        usual = max(counts, key=lambda c: (counts[c], -c))
        for result in accepted:
            if result.record["channels"] != usual:
                result.accepted = False
                result.fingerprint = ""  # depends on the other cases: not remembered in the index
                result.reason = (f"{result.record['source'].get('image', result.case_id)}: image has "
                                 f"{result.record['channels']} channel(s), the rest of the dataset {usual}")
    index = {r.case_id: {"fingerprint": r.fingerprint, "accepted": r.accepted, "reason": r.reason,
                         "warnings": r.warnings, "record": r.record if r.accepted else None}
             for r in results if r.fingerprint}
    cases = [{**r.record, "warnings": r.warnings} for r in results if r.accepted]
    manifest = {
        "name": "unetflow-dataset",
        "source": plan.kind,
        "modality": plan.modality,
        "labels": settings.label_names,
        "instance_labels": settings.instance_labels,
        "num_cases": len(cases),
        "cases": cases,
    }
    _write_json_if_changed(output_dir / "dataset.json", manifest)
    _write_json_if_changed(output_dir / "rejected.json", {
        "rejected": [{"case_id": r.case_id, "reason": r.reason} for r in results if not r.accepted],
        "warnings": [{"case_id": r.case_id, "warning": w} for r in results if r.accepted for w in r.warnings]})
    _write_json_if_changed(output_dir / INDEX_FILE, {"version": INGEST_VERSION, "settings": settings.key(),
                                                     "cases": index})
    _remove_stale(output_dir, {c["case_id"] for c in cases}, settings.instance_labels)
    return manifest, results


def ingest_dataset(raw: Path, output_dir: Path, data: DataConfig, workers: int = 1,
                   map_fn: Callable[..., Iterable[CaseResult]] | None = None) -> tuple[dict, list[CaseResult]]:
    """The whole ingest without Prefect (tests, benchmarks): plan, convert in parallel, finish."""
    settings = IngestSettings.from_config(data)
    plan = plan_ingest(raw, output_dir, data)

    def one(args: tuple[CaseSource, dict | None]) -> CaseResult:
        return ingest_case(args[0], output_dir, settings, args[1])

    pairs = list(zip(plan.sources, plan.previous, strict=True))
    if map_fn is not None:
        case_results = list(map_fn(one, pairs))
    elif workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            case_results = list(pool.map(one, pairs))
    else:
        case_results = [one(p) for p in pairs]
    return finish_ingest(output_dir, plan, case_results, settings)


def summary_table(results: list[CaseResult], manifest: dict, output_dir: Path) -> str:
    """Plain-text summary: counts, then one line per rejected case and per warning."""
    rejected = [r for r in results if not r.accepted]
    warnings = [(r.case_id, w) for r in results if r.accepted for w in r.warnings]
    written = sum(r.written for r in results)
    unchanged = sum(r.unchanged for r in results)
    lines = [f"ingest: {manifest['num_cases']} accepted, {len(rejected)} rejected, {len(warnings)} warnings, "
             f"{written} (re)written, {unchanged} unchanged -> {printable(str(output_dir))}"]
    rows = [("rejected", r.case_id, r.reason) for r in rejected] + [("warning", c, w) for c, w in warnings]
    if rows:
        width = max(len(r[1]) for r in rows)
        lines.append(f"  {'status':<8}  {'case':<{width}}  reason")
        lines += [f"  {status:<8}  {case:<{width}}  {reason}" for status, case, reason in rows]
    return "\n".join(lines)


def _read_index(output_dir: Path) -> dict[str, dict]:
    try:
        payload = json.loads((output_dir / INDEX_FILE).read_text())
        return payload["cases"] if payload.get("version") == INGEST_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_json_if_changed(target: Path, payload: Any) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    if target.exists() and target.read_text() == text:
        return
    write_json(target, payload)


def _remove_temporaries(output_dir: Path) -> None:
    """Hidden ``.name.XXXX.tmp…`` files are what a SIGKILL mid-write leaves behind (see tasks/atomic.py)."""
    if output_dir.is_dir():
        for path in output_dir.rglob(".*.tmp*"):
            if path.is_file():
                path.unlink()


def _remove_stale(output_dir: Path, keep: set[str], instance_labels: bool) -> None:
    """Cases no longer in the source (or now rejected) must not linger in the canonical folder."""
    for folder in OUTPUT_FOLDERS:
        for path in (output_dir / folder).glob("*"):
            stem = strip_nifti_suffix(path.name)
            if path.is_file() and (stem not in keep or not path.name.endswith(NIFTI_SUFFIXES[0])
                                   or (folder == "instancesTr" and not instance_labels)):
                path.unlink()
