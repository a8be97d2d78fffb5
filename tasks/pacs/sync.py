"""``pacs-sync``: find new series on a PACS, segment them, store a DICOM SEG and a volume SR back into their study.

Why it is shaped this way:

* **Rerun-safe.** A sync is rerun after crashes, timeouts and outages. The results' UIDs are derived from
  (source series, model name, model version) (:func:`~tasks.pacs.results.result_uids`), so before working on a
  series the sync asks the PACS whether they exist: nothing is ever stored twice, and a run killed between
  the SEG and the SR only adds the missing one next time. A new model version names new results.
* **Bad data is not retried forever.** A series that failed for a *data* reason (unreadable, not one series,
  no SEG possible) is remembered in ``<work_dir>/state.json`` with a fingerprint (instance count, or the hash
  of its sorted SOPInstanceUIDs) and skipped until it changes. Transport failures are never remembered: the
  next sync retries them. One series failing never stops the others.
* **No patient data kept or logged.** Everything fetched or written that carries identity (the DICOM files,
  the SEG/SR, the infer report) lives in a temporary folder that is removed when the series is finished,
  whatever happened. What stays is named by the series' salted pseudonym: the NIfTI mask and a small
  result JSON per series, ``state.json``, ``summary.json`` and ``runs/<timestamp>.json``. Failure reasons
  are scrubbed of UIDs and the patient's name/ID before they are logged or kept.

Plain functions: the Prefect flow and the CLI wrap :func:`sync_pacs`. One sync per ``work_dir`` at a time
(a lock file refuses a second).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from torch import nn

from tasks.common.atomic import write_json
from tasks.common.errors import CaseRejected
from tasks.common.names import identity_tokens
from tasks.common.plan import Plan
from tasks.inference.dicom_seg import SegIdentity, read_source_headers
from tasks.inference.inputs import InferCase, discover_cases
from tasks.inference.segment import InferSettings, segment_case
from tasks.pacs.outcomes import FailureMemory, SeriesOutcome, Status, SyncSummary
from tasks.pacs.results import (
    ResultUids,
    build_volume_report,
    result_pseudonym,
    result_uids,
    series_description,
)
from tasks.pacs.transport import PacsError, PacsRejected, PacsUnavailable, SeriesFilter, SeriesRef, Transport

log = logging.getLogger("unetflow.pacs")

#: Modalities that are not images a segmentation model can read (objects *about* images, documents, waveforms).
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "DOC", "REG", "FID", "RTSTRUCT", "RTPLAN", "RTDOSE",
                                  "RTRECORD", "PLAN", "RWV", "AU", "ECG", "HD", "EPS", "SMR", "KER", "OT"})
MAX_REASON = 400
#: Digits-and-dots runs long enough to be a UID, never an IPv4 address (at most 15 characters).
_UID_LIKE = re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d.])")


@dataclass(frozen=True)
class SyncSettings:
    """What one sync needs besides the PACS and the model."""

    filters: SeriesFilter
    work_dir: Path  # local state and pseudonymous results, e.g. outputs/pacs
    salt: str  # pseudonym salt (params.data.dicom_id_salt)
    model_name: str
    model_version: str
    infer: InferSettings  # what `unetflow infer` would use; dicom_seg is forced on


# ----------------------------------------------------------------------------------------------- failures
class _Failed(Exception):
    """A series failed; ``remember``: for a data reason, skipped next time unless its fingerprint changed."""

    def __init__(self, reason: str, remember: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.remember = remember


class _Skipped(Exception):
    """A series needs no work (decided after fetching, when only the fetch could tell)."""


#: Exceptions from reading or segmenting that mean "this series' data", not "this machine" (memory, disk, bug).
_DATA_ERRORS = (CaseRejected, ValueError, InvalidDicomError)


@dataclass
class _Series:
    """The series being synced and what must never leave it: UIDs and patient identity, for scrubbing."""

    ref: SeriesRef
    name: str
    uids: ResultUids
    secrets: set[str]
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


# --------------------------------------------------------------------------------------------- the sync
def sync_pacs(transport: Transport, model: nn.Module, plan: Plan, settings: SyncSettings) -> SyncSummary:
    """Sync every series ``settings.filters`` finds; see the module docstring.

    Raises :class:`~tasks.pacs.transport.PacsUnavailable` when the series search itself fails (nothing can be
    done); every failure after that is one series' outcome.
    """
    work_dir = Path(settings.work_dir)
    started = datetime.now(UTC)
    with _exclusive(work_dir):
        _remove_leftovers(work_dir)
        refs = transport.find_series(settings.filters)
        log.info("pacs-sync: %d series found, model %s v%s", len(refs), settings.model_name, settings.model_version)
        state = FailureMemory(work_dir / "state.json")
        outcomes = []
        for ref in refs:
            outcomes.append(_sync_series(transport, model, plan, settings, ref, state))
            state.save()
        summary = SyncSummary(outcomes, started.isoformat(timespec="seconds"), settings.model_name,
                              settings.model_version)
        _write_summary(work_dir, summary, started)
    log.info("pacs-sync: %d done, %d skipped, %d failed", summary.done, summary.skipped, summary.failed)
    return summary


@contextmanager
def _exclusive(work_dir: Path) -> Iterator[None]:
    """Hold ``work_dir/.lock``: two syncs on one folder would delete each other's temporary files."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another pacs-sync is running on {work_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(work_dir: Path) -> None:
    """A sync killed hard (SIGKILL, power) cannot run its ``finally``: its fetched files go now."""
    shutil.rmtree(work_dir / "tmp", ignore_errors=True)


def _write_summary(work_dir: Path, summary: SyncSummary, started: datetime) -> None:
    payload = {**summary.to_json(), "finished_at": _utc_now()}
    write_json(work_dir / "runs" / f"{started.strftime('%Y%m%dT%H%M%S%fZ')}.json", payload)
    write_json(work_dir / "summary.json", payload)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------- one series
def _sync_series(transport: Transport, model: nn.Module, plan: Plan, settings: SyncSettings, ref: SeriesRef,
                 state: FailureMemory) -> SeriesOutcome:
    """One series from decision to stored results; every failure becomes its outcome."""
    clock = time.perf_counter()
    series = _Series(ref, result_pseudonym(settings.salt, ref.study_uid, ref.series_uid),
                     result_uids(ref.series_uid, settings.model_name, settings.model_version),
                     {ref.study_uid, ref.series_uid})
    volumes: dict[str, float] = {}
    try:
        status, reason, volumes = _decide_and_run(transport, model, plan, settings, series, state)
    except _Skipped as skipped:
        status, reason = "skipped", series.scrub(str(skipped))
    except _Failed as failure:
        status, reason = "failed", series.scrub(failure.reason)
        if failure.remember:
            state.remember(series.name, reason, series.ref.instances, series.instances_sha256)
    except PacsError as error:  # from series_exists; fetch and store are sorted in _work
        status, reason = "failed", series.scrub(_transport_reason(error))
    except Exception as error:  # noqa: BLE001 — a full disk, a bug: this series fails, the others go on
        status, reason = "failed", series.scrub(f"{type(error).__name__}: {error}")
    outcome = SeriesOutcome(series.name, status, reason, round(time.perf_counter() - clock, 3), volumes)
    if status == "done":
        state.forget(series.name)
    level = logging.WARNING if status == "failed" else logging.INFO
    log.log(level, "%s: %s%s (%.1f s)", series.name, status, f": {reason}" if reason else "", outcome.seconds)
    return outcome


def _decide_and_run(transport: Transport, model: nn.Module, plan: Plan, settings: SyncSettings, series: _Series,
                    state: FailureMemory) -> tuple[Status, str, dict[str, float]]:
    ref = series.ref
    why_not = unsupported_reason(ref, plan)
    if why_not:
        return "skipped", why_not, {}
    have = {"SEG": transport.series_exists(ref.study_uid, series.uids.seg_series),
            "SR": transport.series_exists(ref.study_uid, series.uids.sr_series)}
    if all(have.values()):
        return "skipped", f"already segmented by {settings.model_name} v{settings.model_version}", {}
    remembered = state.unchanged_before_fetch(series.name, ref)
    if remembered is not None:
        return "skipped", f"failed before and unchanged: {remembered}", {}
    volumes = _work(transport, model, plan, settings, series, state, missing=[k for k, v in have.items() if not v])
    return "done", "", volumes


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


def _transport_reason(error: PacsError, what: str = "") -> str:
    if isinstance(error, PacsRejected):
        return f"PACS refused the {what or 'request'}: {error.status}"
    if isinstance(error, PacsUnavailable):
        return f"PACS unavailable: {error}"
    return f"PACS error: {error}"


# ---------------------------------------------------------------------------------------- the work itself
def _work(transport: Transport, model: nn.Module, plan: Plan, settings: SyncSettings, series: _Series,
          state: FailureMemory, missing: list[str]) -> dict[str, float]:
    """Fetch, segment, store what is ``missing``; the temporary folder goes whatever happens."""
    folder = Path(settings.work_dir) / "tmp" / series.name
    shutil.rmtree(folder, ignore_errors=True)
    try:
        files = _fetch(transport, series, folder / "dicom")
        remembered = state.unchanged_after_fetch(series.name, series.ref, series.instances_sha256 or "")
        if remembered is not None:
            raise _Skipped(f"failed before and unchanged: {remembered}")
        case = _single_case(folder / "dicom", settings.salt, files)
        report = _segment(model, plan, settings, series, case, folder / "out")
        _store(transport, settings, series, case, report, folder / "out", missing)
        _keep_result(settings, series, report)
        return dict(report["class_volumes_ml"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fetch(transport: Transport, series: _Series, folder: Path) -> list[Path]:
    """The series' files renamed ``00001.dcm``… (the transport names them by SOPInstanceUID, and file names end
    up in reasons); records the fingerprint and learns the UIDs and patient identity to scrub."""
    try:
        fetched = sorted(transport.fetch_series(series.ref, folder))
    except PacsError as error:
        raise _Failed(_transport_reason(error), remember=False) from error
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
    series.tokens = _patient_tokens(renamed)
    return renamed


def _patient_tokens(files: list[Path]) -> set[str]:
    """The patient's name and ID fragments, from the first readable header, to keep them out of reasons."""
    for path in files:
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
        except Exception:  # noqa: BLE001 — any unreadable file is reported by the reader later
            continue
        return identity_tokens(str(header.get("PatientName", "") or ""), str(header.get("PatientID", "") or ""))
    return set()


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


def _segment(model: nn.Module, plan: Plan, settings: SyncSettings, series: _Series, case: InferCase,
             out_dir: Path) -> dict[str, Any]:
    """``segment_case`` with the SEG named by the result UIDs; a data problem is remembered, others are not."""
    identity = SegIdentity(algorithm=settings.model_name, series_uid=series.uids.seg_series,
                           instance_uid=series.uids.seg_instance,
                           series_description=series_description(settings.model_name, settings.model_version))
    infer = dataclasses.replace(settings.infer, dicom_seg=True, input_root=str(case.files[0].parent),
                                model_name=settings.model_name, model_version=settings.model_version)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = segment_case(model, plan, case, out_dir, infer, seg_identity=identity)
    except _DATA_ERRORS as error:
        raise _Failed(f"{type(error).__name__}: {error}", remember=True) from error
    except Exception as error:  # noqa: BLE001 — memory, disk, device: this machine's problem, retried next time
        raise _Failed(f"{type(error).__name__}: {error}", remember=False) from error
    if report.get("dicom_seg_error") or not report.get("dicom_seg"):
        raise _Failed(f"no DICOM SEG: {report.get('dicom_seg_error') or 'not written'}", remember=True)
    return report


def _store(transport: Transport, settings: SyncSettings, series: _Series, case: InferCase, report: dict[str, Any],
           out_dir: Path, missing: list[str]) -> None:
    """Build the SR from the written SEG and store the ``missing`` ones, SEG first."""
    seg = pydicom.dcmread(str(out_dir / report["dicom_seg"]))
    try:
        headers = read_source_headers(case.files)
        sr = build_volume_report(seg, headers, report["class_volumes_ml"], settings.model_name,
                                 settings.model_version, series.uids)
    except _DATA_ERRORS as error:
        raise _Failed(f"no volume report: {type(error).__name__}: {error}", remember=True) from error
    for kind, dataset in (("SEG", seg), ("SR", sr)):
        if kind not in missing:
            continue
        try:
            transport.store([dataset])
        except PacsError as error:
            raise _Failed(_transport_reason(error, kind), remember=False) from error


def _keep_result(settings: SyncSettings, series: _Series, report: dict[str, Any]) -> None:
    """Move the mask to ``results/<pseudonym>.nii.gz`` and write ``results/<pseudonym>.json``: no UIDs, no names."""
    results = Path(settings.work_dir) / "results"
    results.mkdir(parents=True, exist_ok=True)
    os.replace(report["outputs"]["mask"], results / f"{series.name}.nii.gz")
    write_json(results / f"{series.name}.json", {
        "series": series.name, "status": "done",
        "model": {"name": settings.model_name, "version": settings.model_version},
        "volumes_ml": report["class_volumes_ml"], "shape": report.get("shape"), "voxel_ml": report.get("voxel_ml"),
        "timings": report.get("timings", {}), "finished_at": _utc_now()})
