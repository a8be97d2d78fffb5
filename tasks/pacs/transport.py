"""What the PACS sync needs from a PACS, independent of the wire protocol.

Hospitals expose either DICOMweb (QIDO/WADO/STOW over HTTP) or classic DIMSE (C-FIND/C-GET/C-STORE), sometimes
only one of them. The sync logic is written once against :class:`Transport`; ``tasks.pacs.dicomweb`` and
``tasks.pacs.dimse`` implement it. Both report failures with the same three exceptions, so the caller can tell
"try again later" (:class:`PacsUnavailable`) from "this PACS refuses this object" (:class:`PacsRejected`).

Exception messages name UIDs, addresses and statuses, never a patient's name or ID: they end up in logs and
flow-run records that are not access-controlled like the PACS itself.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tasks.common.atomic import atomic_path

log = logging.getLogger(__name__)

T = TypeVar("T")
_DATE = re.compile(r"^\d{8}$")


@dataclass(frozen=True)
class SeriesFilter:
    """Which series to find. Date and modality go to the PACS; the description regex is applied here,
    because PACS wildcard matching on SeriesDescription is neither regex nor consistent between vendors."""

    study_date: tuple[str, str] | None = None  # inclusive YYYYMMDD range
    modality: str | None = None  # e.g. "CT"
    series_description: str | None = None  # Python regex, re.search, applied client-side

    def __post_init__(self) -> None:
        if self.study_date is not None:
            if len(self.study_date) != 2 or not all(_DATE.match(d or "") for d in self.study_date):
                raise ValueError(f"study_date must be two YYYYMMDD strings, got {self.study_date!r}")
            if self.study_date[0] > self.study_date[1]:
                raise ValueError(f"study_date range is reversed: {self.study_date[0]} > {self.study_date[1]}")
        if self.series_description is not None:
            re.compile(self.series_description)  # fail early on a bad pattern, not after a network round trip

    def date_range(self) -> str | None:
        """The DICOM range matching value, ``YYYYMMDD-YYYYMMDD``."""
        return None if self.study_date is None else f"{self.study_date[0]}-{self.study_date[1]}"

    def accepts(self, ref: SeriesRef) -> bool:
        """Client-side check of every criterion (the PACS may ignore or loosen the server-side ones)."""
        if self.modality is not None and ref.modality.upper() != self.modality.upper():
            return False
        if self.study_date is not None and not (self.study_date[0] <= ref.study_date <= self.study_date[1]):
            return False
        if self.series_description is not None and not re.search(self.series_description, ref.description):
            return False
        return True


@dataclass(frozen=True)
class SeriesRef:
    """One series on the PACS, as much as the sync needs to decide about it and fetch it."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    study_date: str
    instances: int | None


class PacsError(Exception):
    """Base of every PACS failure. The message never contains a patient's name or ID."""


class PacsUnavailable(PacsError):
    """The PACS could not be reached, timed out, or answered with a server error, even after retries."""


class PacsRejected(PacsError):
    """The PACS refused what was sent (STOW-RS / C-STORE).

    ``status`` is the PACS's own status: ``"HTTP 400"`` followed by the STOW failure reasons
    (``"HTTP 400; FailureReason 0xC000"``), the DIMSE status ``"0xA700"`` (distinct statuses joined by ``"; "``),
    or a refused presentation context (``"presentation context result 0x03 (abstract syntax not supported)"``).
    ``failed_instances`` holds the SOPInstanceUIDs refused, when the PACS said which (empty: the whole batch).
    Both transports offer every instance of the batch; the ones not listed were stored.
    """

    def __init__(self, message: str, status: str, failed_instances: Sequence[str] = ()) -> None:
        super().__init__(f"{message} (status {status})")
        self.status = status
        self.failed_instances = tuple(failed_instances)


@runtime_checkable
class Transport(Protocol):
    """What the sync needs from a PACS; see the module docstring."""

    def find_series(self, filters: SeriesFilter) -> list[SeriesRef]: ...

    def fetch_series(self, ref: SeriesRef, target_dir: Path) -> list[Path]: ...

    def existing_series(self, study_uid: str, series_uids: Sequence[str]) -> set[str]: ...

    def store(self, datasets: Sequence[pydicom.Dataset]) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; waits ``backoff_s``, ``backoff_s*factor``, ... between them; ``timeout_s``
    bounds each network operation (HTTP request, DIMSE association/response)."""

    attempts: int = 4
    backoff_s: float = 1.0
    factor: float = 2.0
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")

    def delays(self) -> list[float]:
        """The waits between attempts (one fewer than ``attempts``)."""
        return [self.backoff_s * self.factor**i for i in range(self.attempts - 1)]


class Retryable(PacsError):
    """Raised inside a transport for a failure worth retrying; :func:`with_retries` turns the last one into
    :class:`PacsUnavailable`. Never escapes a transport."""


def uid_tag(uid: str) -> str:
    """A short stand-in for a UID in messages and logs (``#`` + 8 hex of its sha256): enough to tell two
    series apart in one log, not the identifier itself (logs often travel further than the PACS's data)."""
    return "#" + hashlib.sha256(str(uid).encode("utf-8")).hexdigest()[:8]


def with_retries(call: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """Run ``call``; retry :class:`Retryable`/:class:`PacsUnavailable` failures with exponential backoff.

    Any other exception (a :class:`PacsRejected`, a bug) passes through at once: retrying a refusal only
    delays the same answer. After the last attempt raises ``PacsUnavailable("<what> failed after N attempts:
    <reason>")``.
    """
    delays = policy.delays()
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except (Retryable, PacsUnavailable) as exc:
            if attempt == policy.attempts:
                raise PacsUnavailable(f"{what} failed after {policy.attempts} attempts: {exc}") from exc
            delay = delays[attempt - 1]
            log.warning("%s failed (attempt %d/%d): %s; retrying in %.1f s", what, attempt, policy.attempts,
                        exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def write_instance_bytes(data: bytes, target_dir: Path) -> Path:
    """Write one received DICOM file unchanged as ``<SOPInstanceUID>.dcm`` atomically; only its header is read
    (the UID names the file), never its pixels. Anything that is not a DICOM file is refused."""
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        uid = str(header.SOPInstanceUID)
    except Exception as error:  # noqa: BLE001 — whatever pydicom makes of bytes that are no DICOM file
        raise PacsError(f"received a part that is not a DICOM instance ({type(error).__name__})") from None
    if not re.fullmatch(r"[0-9.]{1,64}", uid):
        raise PacsError(f"received an instance whose SOPInstanceUID is not a UID: {uid[:64]!r}")
    target = Path(target_dir) / f"{uid}.dcm"
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def ensure_file_meta(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` if it has a usable file meta header, else a shallow copy with one (explicit VR little endian):
    STOW-RS needs Part 10 files and C-STORE a transfer syntax. The caller's dataset is not modified."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta and "MediaStorageSOPInstanceUID" in meta:
        return ds
    out = copy.copy(ds)
    out.file_meta = FileMetaDataset(copy.deepcopy(meta)) if meta is not None else FileMetaDataset()
    out.file_meta.TransferSyntaxUID = out.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    for meta_key, key in (("MediaStorageSOPClassUID", "SOPClassUID"), ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        if key in ds:
            setattr(out.file_meta, meta_key, ds[key].value)
    out.preamble = getattr(ds, "preamble", None) or b"\0" * 128
    return out


def series_refs(rows: Sequence[SeriesRef], filters: SeriesFilter) -> list[SeriesRef]:
    """Apply the client-side checks and drop duplicates, keeping the PACS's order."""
    seen: set[str] = set()
    out: list[SeriesRef] = []
    for ref in rows:
        if ref.series_uid in seen or not filters.accepts(ref):
            continue
        seen.add(ref.series_uid)
        out.append(ref)
    return out
