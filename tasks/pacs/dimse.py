"""DIMSE transport: C-FIND to find series, C-GET to fetch them, C-STORE to store results (pynetdicom).

Many hospital PACS speak only classic DICOM networking. C-GET is used rather than C-MOVE because it brings the
instances back over the same association: no second listening port, no AE registration of *our* address on
the PACS side, no firewall opening towards the pipeline. The price is that every SOP class we may receive must
be proposed up front with the SCP role (at most 128 presentation contexts per association), so
:data:`RETRIEVE_SOP_CLASSES` lists the classes a segmentation pipeline meets, not all 170 storage classes.

Queries are hierarchical (STUDY level with the date range, then SERIES level per study), the form every
PACS must support; only the unique keys go into a C-GET identifier. No patient attribute is ever requested.

Failures are sorted as in the DICOMweb transport: no connection, refused association, timeout or an aborted
association are retried (:class:`PacsUnavailable` in the end); a non-success C-STORE status is
:class:`PacsRejected` with the status as ``0xXXXX``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom import sop_class as sc
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from tasks.pacs.transport import (
    PacsError,
    PacsRejected,
    Retryable,
    RetryPolicy,
    SeriesFilter,
    SeriesRef,
    ensure_file_meta,
    series_refs,
    uid_tag,
    with_retries,
    write_instance_bytes,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: What C-GET may bring back (SCP role proposed for each): images a U-Net reads, and the objects
#: results are stored as (SEG, SR), so a re-fetch of our own output works too.
RETRIEVE_SOP_CLASSES: tuple[str, ...] = (
    sc.CTImageStorage, sc.EnhancedCTImageStorage, sc.LegacyConvertedEnhancedCTImageStorage,
    sc.MRImageStorage, sc.EnhancedMRImageStorage, sc.LegacyConvertedEnhancedMRImageStorage,
    sc.PositronEmissionTomographyImageStorage, sc.EnhancedPETImageStorage,
    sc.LegacyConvertedEnhancedPETImageStorage, sc.NuclearMedicineImageStorage,
    sc.UltrasoundImageStorage, sc.ComputedRadiographyImageStorage, sc.DigitalXRayImageStorageForPresentation,
    sc.SecondaryCaptureImageStorage, sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage, sc.ParametricMapStorage,
    sc.SegmentationStorage, sc.SurfaceSegmentationStorage, sc.RTStructureSetStorage, sc.RTDoseStorage,
    sc.Comprehensive3DSRStorage, sc.ComprehensiveSRStorage, sc.EnhancedSRStorage, sc.BasicTextSRStorage,
    sc.KeyObjectSelectionDocumentStorage, sc.GrayscaleSoftcopyPresentationStateStorage,
    sc.EncapsulatedPDFStorage,
)
#: Accepted on C-GET: uncompressed first (so the PACS transcodes when it can), then lossless compressed.
RETRIEVE_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     JPEGLosslessSV1, JPEG2000Lossless, RLELossless]
MAX_CONTEXTS = 128
_SUCCESS, _PENDING = 0x0000, (0xFF00, 0xFF01)
_WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)


def parse_dimse(spec: str) -> tuple[str, int, str]:
    """``"HOST:PORT:AET"`` -> ``(host, port, aet)``; a ValueError that says what is wrong otherwise."""
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"DIMSE address must be HOST:PORT:AET (e.g. pacs.local:104:PACS), got {spec!r}")
    host, port_text, aet = parts
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"DIMSE port must be a number 1-65535, got {port_text!r} in {spec!r}")
    if len(aet) > 16 or not re.fullmatch(r"[ -~]+", aet) or "\\" in aet or aet.strip() != aet:
        raise ValueError(f"AE title must be 1-16 printable ASCII characters without backslash, got {aet!r}")
    return host, int(port_text), aet


class DimseTransport:
    """A :class:`~tasks.pacs.transport.Transport` over DIMSE (Study Root C-FIND / C-GET, C-STORE)."""

    def __init__(self, host: str, port: int, called_aet: str, calling_aet: str = "UNETFLOW",
                 retry: RetryPolicy = RetryPolicy()) -> None:
        self.host, self.port, self.called_aet, self.calling_aet = host, port, called_aet, calling_aet
        self.retry = retry

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> DimseTransport:
        host, port, aet = parse_dimse(spec)
        return cls(host, port, aet, **kwargs)

    def __repr__(self) -> str:
        return f"DimseTransport({self.host}:{self.port}:{self.called_aet}, calling {self.calling_aet})"

    # -- Transport ---------------------------------------------------------------------------------------
    def find_series(self, filters: SeriesFilter) -> list[SeriesRef]:
        """Hierarchical, as every PACS supports it: STUDY level (date range), then SERIES level per study
        (modality), on one association. StudyDate is a study attribute: it comes from the study answer."""
        refs = self._call("C-FIND series", lambda: self._find_series(filters))
        return series_refs(refs, filters)

    def existing_series(self, study_uid: str, series_uids: Sequence[str]) -> set[str]:
        queries = [_series_query(StudyInstanceUID=study_uid, SeriesInstanceUID=uid) for uid in series_uids]
        answers = self._call(f"C-FIND of series in study {uid_tag(study_uid)}", lambda: self._find(queries))
        return set(series_uids) & {str(row.get("SeriesInstanceUID", "")) for rows in answers for row in rows}

    def fetch_series(self, ref: SeriesRef, target_dir: Path) -> list[Path]:
        Path(target_dir).mkdir(parents=True, exist_ok=True)
        return self._call(f"C-GET of series {uid_tag(ref.series_uid)}", lambda: self._get(ref, Path(target_dir)))

    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        if not datasets:
            return
        prepared = [ensure_file_meta(ds) for ds in datasets]
        for ds in prepared:
            if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
                raise ValueError("C-STORE needs SOPClassUID and SOPInstanceUID in every dataset")
        self._call(f"C-STORE of {len(prepared)} instance(s)", lambda: self._store(prepared))

    # -- one attempt each ----------------------------------------------------------------------------------
    def _find_series(self, filters: SeriesFilter) -> list[SeriesRef]:
        study_query = pydicom.Dataset()
        study_query.QueryRetrieveLevel = "STUDY"
        study_query.StudyInstanceUID, study_query.StudyDate = "", filters.date_range() or ""
        refs: list[SeriesRef] = []
        with self._association([build_context(sc.StudyRootQueryRetrieveInformationModelFind)]) as assoc:
            for study in _c_find(assoc, study_query, self._where()):
                uid, date = str(study.get("StudyInstanceUID", "")), str(study.get("StudyDate", ""))
                query = _series_query(StudyInstanceUID=uid, Modality=filters.modality or "")
                refs += [_series_ref(row, uid, date) for row in _c_find(assoc, query, self._where())]
        return refs

    def _find(self, queries: Sequence[pydicom.Dataset]) -> list[list[pydicom.Dataset]]:
        with self._association([build_context(sc.StudyRootQueryRetrieveInformationModelFind)]) as assoc:
            return [_c_find(assoc, query, self._where()) for query in queries]

    def _get(self, ref: SeriesRef, target_dir: Path) -> list[Path]:
        written: list[Path] = []
        failures: list[str] = []

        def on_store(event: evt.Event) -> int:
            try:
                # written as received (preamble, file meta, the peer's encoding), never decoded and re-encoded
                written.append(write_instance_bytes(event.encoded_dataset(), target_dir))
                return _SUCCESS
            except Exception as exc:  # noqa: BLE001 - reported to the PACS as a failed sub-operation
                failures.append(f"{type(exc).__name__}: {exc}")
                return 0xA700

        query = pydicom.Dataset()  # unique keys only: a C-GET identifier carries nothing else
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID, query.SeriesInstanceUID = ref.study_uid, ref.series_uid
        contexts, roles = _retrieve_contexts()
        with self._association(contexts, roles, [(evt.EVT_C_STORE, on_store)]) as assoc:
            for status, _identifier in assoc.send_c_get(query, sc.StudyRootQueryRetrieveInformationModelGet):
                code = _status(status, "C-GET")
                if code in _PENDING:
                    continue
                failed = int(getattr(status, "NumberOfFailedSuboperations", 0) or 0)
                if failures:
                    raise PacsError(f"C-GET of series {uid_tag(ref.series_uid)}: could not write: {failures[0]}")
                if code != _SUCCESS or failed:
                    raise PacsError(f"C-GET of series {uid_tag(ref.series_uid)} from {self._where()} ended with status "
                                    f"0x{code:04X} ({failed} failed sub-operations)")
        return sorted(set(written))

    def _store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """Offer every instance; collect the refusals and raise them together at the end."""
        refused: list[tuple[str, str]] = []
        with self._association(_store_contexts(datasets)) as assoc:
            accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
            for ds in datasets:
                pair = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                if pair not in accepted:
                    contexts = [cx for cx in assoc.rejected_contexts if cx.abstract_syntax == pair[0]]
                    refused.append((str(ds.SOPInstanceUID),
                                    _context_status(contexts[0]) if contexts else "no presentation context"))
                    continue
                code = _status(assoc.send_c_store(ds), "C-STORE")
                if code in _WARNINGS:
                    log.warning("C-STORE of %s: warning status 0x%04X", uid_tag(ds.SOPInstanceUID), code)
                elif code != _SUCCESS:
                    refused.append((str(ds.SOPInstanceUID), f"0x{code:04X}"))
        if refused:
            statuses = "; ".join(dict.fromkeys(status for _, status in refused))
            raise PacsRejected(f"C-STORE: {len(refused)} of {len(datasets)} instance(s) refused by {self._where()}",
                               statuses, [uid for uid, _ in refused])

    # -- association ---------------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.host}:{self.port} ({self.called_aet})"

    def _call(self, what: str, call: Callable[[], T]) -> T:
        return with_retries(call, self.retry, what)

    @contextmanager
    def _association(self, contexts: list[PresentationContext], roles: list[Any] | None = None,
                     handlers: list[Any] | None = None) -> Iterator[Association]:
        ae = AE(ae_title=self.calling_aet)
        timeout = self.retry.timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        ae.requested_contexts = contexts
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet, ext_neg=roles or None,
                             evt_handlers=handlers or None)
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                refused = sorted({cx.abstract_syntax for cx in assoc.rejected_contexts})
                raise PacsRejected(f"{self._where()} accepts none of the proposed SOP classes "
                                   f"({', '.join(refused)})", _context_status(assoc.rejected_contexts[0]))
            raise Retryable(f"association with {self._where()} {_why_not(assoc)}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()


_CONTEXT_RESULTS = {1: "user rejection", 2: "no reason", 3: "abstract syntax not supported",
                    4: "transfer syntaxes not supported"}


def _context_status(context: PresentationContext) -> str:
    """A refused presentation context as a status: ``presentation context result 0x03 (...)``."""
    result = int(context.result or 0)
    return f"presentation context result 0x{result:02X} ({_CONTEXT_RESULTS.get(result, 'unknown')})"


def _why_not(assoc: Association) -> str:
    """Why an association did not come up, in words (rejection result/source/reason when there is one)."""
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        p = assoc.acceptor.primitive
        return f"rejected ({p.result_str}, {p.source_str}: {p.reason_str})"
    if assoc.is_aborted:
        return "aborted (connection refused, dropped or timed out)"
    return "not established (no connection or timed out)"


def _status(status: pydicom.Dataset, what: str) -> int:
    """The status code; an empty status means the association broke (timeout, abort): retryable."""
    if not status or "Status" not in status:
        raise Retryable(f"{what}: no response (association timed out or was aborted)")
    return int(status.Status)


def _c_find(assoc: Association, query: pydicom.Dataset, where: str) -> list[pydicom.Dataset]:
    """All identifiers of one Study Root C-FIND; a failure status is a PacsError (the query will not improve)."""
    rows: list[pydicom.Dataset] = []
    for status, identifier in assoc.send_c_find(query, sc.StudyRootQueryRetrieveInformationModelFind):
        code = _status(status, "C-FIND")
        if code in _PENDING and identifier is not None:
            rows.append(identifier)
        elif code != _SUCCESS:
            raise PacsError(f"C-FIND ({query.QueryRetrieveLevel} level) failed on {where} with status 0x{code:04X}")
    return rows


def _series_query(**keys: str) -> pydicom.Dataset:
    """A SERIES-level identifier: series attributes only (plus the study's unique key), empty = return it."""
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "SERIES"
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription",
                 "NumberOfSeriesRelatedInstances"):
        setattr(query, name, keys.get(name, ""))
    return query


def _series_ref(row: pydicom.Dataset, study_uid: str, study_date: str) -> SeriesRef:
    count = row.get("NumberOfSeriesRelatedInstances", None)
    return SeriesRef(study_uid=study_uid, series_uid=str(row.get("SeriesInstanceUID", "")),
                     modality=str(row.get("Modality", "")), description=str(row.get("SeriesDescription", "")),
                     study_date=study_date, instances=int(count) if count not in (None, "") else None)


def _retrieve_contexts() -> tuple[list[PresentationContext], list[Any]]:
    contexts = [build_context(sc.StudyRootQueryRetrieveInformationModelGet)]
    contexts += [build_context(uid, RETRIEVE_SYNTAXES) for uid in RETRIEVE_SOP_CLASSES]
    assert len(contexts) <= MAX_CONTEXTS
    return contexts, [build_role(uid, scp_role=True) for uid in RETRIEVE_SOP_CLASSES]


def _store_contexts(datasets: Sequence[pydicom.Dataset]) -> list[PresentationContext]:
    """One context per (SOP class, transfer syntax) actually sent; more than 128 is refused up front."""
    pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    if len(pairs) > MAX_CONTEXTS:
        raise ValueError(f"{len(pairs)} SOP class/transfer syntax pairs in one C-STORE batch; split it "
                         f"(at most {MAX_CONTEXTS} presentation contexts per association)")
    return [build_context(uid, [syntax]) for uid, syntax in pairs]
