"""The three steps one series goes through in a sync, each a plain function that never raises:

1. :func:`prepare` — decide whether the series needs work (can the model read it? do its results exist? did it
   fail unchanged before?), fetch it into a temporary folder and read it as one DICOM series;
2. :func:`segment` — exactly ``unetflow infer``'s path (``segment_case``), the SEG named by the result UIDs;
3. :func:`store` — build the volume SR from the SEG, store what the PACS lacks (SEG first), keep the
   pseudonymous mask and result JSON.

Each returns the series' :class:`Finished` outcome as soon as it has one (skipped, or failed with a scrubbed
reason and whether to remember it), else what the next step needs. :mod:`tasks.pacs.sync` runs them overlapped
(series *n+1* fetched and series *n−1* stored while series *n* is segmented), so they share nothing mutable
but the failure memory, which they only read. The temporary folder of a series is removed by the step that
finishes it, whatever happened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from torch import nn

from tasks.common.atomic import write_json
from tasks.common.errors import CaseRejected
from tasks.common.names import identity_tokens
from tasks.common.plan import Plan
from tasks.inference.inputs import InferCase, discover_cases
from tasks.inference.segment import InferSettings, segment_case, utc_now
from tasks.pacs.outcomes import FailureMemory, Status
from tasks.pacs.results import (
    ResultUids,
    build_volume_report,
    result_pseudonym,
    result_uids,
    seg_identity,
    source_evidence,
)
from tasks.pacs.transport import PacsError, PacsRejected, PacsUnavailable, SeriesFilter, SeriesRef, Transport

#: Modalities that are not images a segmentation model can read (objects *about* images, documents, waveforms).
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "DOC", "REG", "FID", "RTSTRUCT", "RTPLAN", "RTDOSE",
                                  "RTRECORD", "PLAN", "RWV", "AU", "ECG", "HD", "EPS", "SMR", "KER", "OT"})
MAX_REASON = 400
#: Digits-and-dots runs long enough to be a UID, never an IPv4 address (at most 15 characters).
_UID_LIKE = re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d.])")
#: ImageType value 3 of a scout (topogram, scanogram): one or a few projection images, in a CT or MR study.
LOCALIZER = "LOCALIZER"
LOCALIZER_REASON = "a localizer (scout) series: projection images, not a volume to segment"
#: Exceptions from reading or segmenting that mean "this series' data", not "this machine" (memory, disk, bug).
_DATA_ERRORS = (CaseRejected, ValueError, InvalidDicomError)


@dataclass(frozen=True)
class SyncSettings:
    """What one sync needs besides the PACS and the model."""

    filters: SeriesFilter
    work_dir: Path  # local state and pseudonymous results, e.g. outputs/pacs
    salt: str  # pseudonym salt (params.data.dicom_id_salt)
    model_name: str
    model_version: str
    infer: InferSettings  # what `unetflow infer` would use; dicom_seg is forced on


@dataclass(frozen=True)
class SyncContext:
    """Everything the steps read: the PACS, the model and its plan, the settings, the failure memory."""

    transport: Transport
    model: nn.Module
    plan: Plan
    settings: SyncSettings
    memory: FailureMemory


# ------------------------------------------------------------------------------------------ what is passed on
@dataclass
class Series:
    """The series being synced and what must never leave it: UIDs and patient identity, for scrubbing."""

    ref: SeriesRef
    name: str
    uids: ResultUids
    secrets: set[str]
    started: float = field(default_factory=time.perf_counter)
    tokens: set[str] = field(default_factory=set)
    instances_sha256: str | None = None

    def scrub(self, text: str) -> str:
        """``text`` on one line, without this series' UIDs, anything UID-shaped, or the patient's name/ID."""
        text = " ".join(str(text).split())
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "<uid>")
        text = _UID_LIKE.sub(lambda m: "<uid>" if len(m.group()) > 15 else m.group(), text)
        for token in sorted(self.tokens, key=len, reverse=True):
            text = re.sub(re.escape(token), "<redacted>", text, flags=re.IGNORECASE)
        return text[:MAX_REASON]


@dataclass
class InFlight:
    """A series between steps: its temporary folder, which results the PACS lacks, its first header (read once:
    patient and study for the SR), what segmenting gave."""

    series: Series
    folder: Path
    missing: list[str]
    case: InferCase | None = None
    source_header: pydicom.Dataset | None = None
    report: dict[str, Any] | None = None


@dataclass
class Finished:
    """A series' outcome. ``remember``: not fetched again until it changes (a data failure, a localizer)."""

    series: Series
    status: Status
    reason: str = ""
    remember: bool = False
    volumes_ml: dict[str, float] = field(default_factory=dict)


class _Failed(Exception):
    def __init__(self, reason: str, remember: bool) -> None:
        super().__init__(reason)
        self.reason, self.remember = reason, remember


def _finished_by(series: Series, error: Exception) -> Finished:
    """The outcome an exception from any step means; the reason scrubbed."""
    if isinstance(error, _Failed):
        return Finished(series, "failed", series.scrub(error.reason), error.remember)
    if isinstance(error, PacsError):
        return Finished(series, "failed", series.scrub(transport_reason(error)))
    # a full disk, a bug: this series fails, the others go on
    return Finished(series, "failed", series.scrub(f"{type(error).__name__}: {error}"))


def transport_reason(error: PacsError, what: str = "") -> str:
    if isinstance(error, PacsRejected):
        return f"PACS refused the {what or 'request'}: {error.status}"
    if isinstance(error, PacsUnavailable):
        return f"PACS unavailable: {error}"
    return f"PACS error: {error}"


# ------------------------------------------------------------------------------------------- 1. prepare
def prepare(context: SyncContext, ref: SeriesRef) -> InFlight | Finished:
    """Decide, fetch and read one series; see the module docstring."""
    settings = context.settings
    series = Series(ref, result_pseudonym(settings.salt, ref.study_uid, ref.series_uid),
                    result_uids(ref.series_uid, settings.model_name, settings.model_version),
                    {ref.study_uid, ref.series_uid})
    folder = Path(settings.work_dir) / "tmp" / series.name
    try:
        why_not = unsupported_reason(ref, context.plan)
        if why_not:
            return Finished(series, "skipped", why_not)
        remembered = context.memory.unchanged_before_fetch(series.name, ref)  # local: before asking the PACS
        if remembered is not None:
            return Finished(series, "skipped", remembered)
        results = {"SEG": series.uids.seg_series, "SR": series.uids.sr_series}
        found = context.transport.existing_series(ref.study_uid, list(results.values()))
        have = {kind: uid in found for kind, uid in results.items()}
        if all(have.values()):
            return Finished(series, "skipped", f"already segmented by {settings.model_name} v{settings.model_version}")
        shutil.rmtree(folder, ignore_errors=True)
        files, header = _fetch(context.transport, series, folder / "dicom")
        remembered = context.memory.unchanged_after_fetch(series.name, ref, series.instances_sha256 or "")
        if remembered is not None or LOCALIZER in _image_type(header):
            shutil.rmtree(folder, ignore_errors=True)
            return (Finished(series, "skipped", series.scrub(remembered)) if remembered is not None
                    else Finished(series, "skipped", LOCALIZER_REASON, remember=True))
        case = _single_case(folder / "dicom", settings.salt, files)
        return InFlight(series, folder, [kind for kind, present in have.items() if not present], case, header)
    except Exception as error:  # noqa: BLE001 — every failure is this series' outcome
        shutil.rmtree(folder, ignore_errors=True)
        return _finished_by(series, error)


def unsupported_reason(ref: SeriesRef, plan: Plan) -> str | None:
    """Why the model cannot segment this series, or None when it can."""
    modality = (ref.modality or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return f"modality {modality or '(none)'} is not an image series"
    accepted = {m.upper() for m in plan.channel_modalities}
    if accepted and modality not in accepted:
        return f"modality {modality or '(none)'}: the model reads {', '.join(sorted(accepted))}"
    if plan.in_channels != 1:
        return f"the model needs {plan.in_channels} channels, one series gives one"
    if plan.spatial_dims == 3 and ref.instances is not None and ref.instances < 2:
        return f"{ref.instances} instance(s): a 3D model needs a volume"
    return None


def _fetch(transport: Transport, series: Series, folder: Path) -> tuple[list[Path], pydicom.Dataset]:
    """The series' files renamed ``00001.dcm``… (the transport names them by SOPInstanceUID, and file names end
    up in reasons) and the first readable header; records the fingerprint and learns the UIDs and patient
    identity to scrub."""
    try:
        fetched = sorted(transport.fetch_series(series.ref, folder))
    except PacsError as error:
        raise _Failed(transport_reason(error), remember=False) from error
    if not fetched:
        raise _Failed("the PACS returned no instances", remember=False)
    instance_uids = sorted(path.stem for path in fetched)
    series.secrets.update(instance_uids)
    series.instances_sha256 = hashlib.sha256("\n".join(instance_uids).encode()).hexdigest()
    renamed = []
    for index, path in enumerate(fetched, start=1):
        target = folder / f"{index:05d}.dcm"
        os.replace(path, target)
        renamed.append(target)
    header = _first_header(renamed)
    series.tokens = identity_tokens(str(header.get("PatientName", "") or ""), str(header.get("PatientID", "") or ""))
    return renamed, header


def _first_header(files: list[Path]) -> pydicom.Dataset:
    """The first readable header, pixels not read; empty if none reads."""
    for path in files:
        try:
            return pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 — any unreadable file is reported by the reader later
            continue
    return pydicom.Dataset()


def _image_type(header: pydicom.Dataset) -> set[str]:
    value = header.get("ImageType", None) or []
    return {str(item).upper() for item in ([value] if isinstance(value, str) else value)}


def _single_case(folder: Path, salt: str, files: list[Path]) -> InferCase:
    """Exactly one DICOM series is expected in what was fetched; anything else is this series' data problem."""
    cases, problems = discover_cases(folder, salt=salt)
    failures = [p.reason for p in problems if p.status == "failed"]
    dicom = [c for c in cases if c.kind == "dicom"]
    if failures:
        raise _Failed("; ".join(failures), remember=True)
    if len(dicom) != 1:
        raise _Failed(f"{len(dicom)} DICOM series in the {len(files)} fetched file(s), expected one", remember=True)
    return dicom[0]


# ------------------------------------------------------------------------------------------- 2. segment
def segment(context: SyncContext, work: InFlight) -> InFlight | Finished:
    """``segment_case`` with the SEG named by the result UIDs; a data problem is remembered, others are not."""
    try:
        return dataclasses.replace(work, report=_segment_case(context, work))
    except Exception as error:  # noqa: BLE001 — every failure is this series' outcome
        shutil.rmtree(work.folder, ignore_errors=True)
        return _finished_by(work.series, error)


def _segment_case(context: SyncContext, work: InFlight) -> dict[str, Any]:
    settings, series, case = context.settings, work.series, work.case
    assert case is not None
    identity = seg_identity(settings.model_name, settings.model_version, series.uids)
    infer = dataclasses.replace(settings.infer, dicom_seg=True, input_root=str(case.files[0].parent),
                                model_name=settings.model_name, model_version=settings.model_version)
    out_dir = work.folder / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = segment_case(context.model, context.plan, case, out_dir, infer, seg_identity=identity)
    except _DATA_ERRORS as error:
        raise _Failed(f"{type(error).__name__}: {error}", remember=True) from error
    except Exception as error:  # noqa: BLE001 — memory, disk, device: this machine's problem, retried next time
        raise _Failed(f"{type(error).__name__}: {error}", remember=False) from error
    if report.get("dicom_seg_error") or not report.get("dicom_seg"):
        raise _Failed(f"no DICOM SEG: {report.get('dicom_seg_error') or 'not written'}", remember=True)
    return report


# --------------------------------------------------------------------------------------------- 3. store
def store(context: SyncContext, work: InFlight) -> Finished:
    """Build the SR from the written SEG, store the ``missing`` results (SEG first), keep the local result."""
    series = work.series
    try:
        assert work.source_header is not None and work.report is not None
        _store_results(context, work.source_header, work.report, work.folder / "out", series, work.missing)
        _keep_result(context.settings, series, work.report)
        return Finished(series, "done", volumes_ml=dict(work.report["class_volumes_ml"]))
    except Exception as error:  # noqa: BLE001
        return _finished_by(series, error)
    finally:
        shutil.rmtree(work.folder, ignore_errors=True)


def _store_results(context: SyncContext, source_header: pydicom.Dataset, report: dict[str, Any], out_dir: Path,
                   series: Series, missing: list[str]) -> None:
    settings = context.settings
    seg = pydicom.dcmread(str(out_dir / report["dicom_seg"]))
    try:
        # Patient and study from the first slice; the other slices are known from the SEG's references.
        sr = build_volume_report(seg, source_evidence(source_header, seg), report["class_volumes_ml"],
                                 settings.model_name, settings.model_version, series.uids)
    except _DATA_ERRORS as error:
        raise _Failed(f"no volume report: {type(error).__name__}: {error}", remember=True) from error
    for kind, dataset in (("SEG", seg), ("SR", sr)):
        if kind not in missing:
            continue
        try:
            context.transport.store([dataset])
        except PacsError as error:
            raise _Failed(transport_reason(error, kind), remember=False) from error


def _keep_result(settings: SyncSettings, series: Series, report: dict[str, Any]) -> None:
    """Move the mask to ``results/<pseudonym>.nii.gz`` and write ``results/<pseudonym>.json``: no UIDs, no names."""
    results = Path(settings.work_dir) / "results"
    results.mkdir(parents=True, exist_ok=True)
    os.replace(report["outputs"]["mask"], results / f"{series.name}.nii.gz")
    write_json(results / f"{series.name}.json", {
        "series": series.name, "status": "done",
        "model": {"name": settings.model_name, "version": settings.model_version},
        "volumes_ml": report["class_volumes_ml"], "shape": report.get("shape"), "voxel_ml": report.get("voxel_ml"),
        "timings": report.get("timings", {}), "finished_at": utc_now()})
