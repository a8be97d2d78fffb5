"""DICOMweb transport: QIDO-RS to find series, WADO-RS to fetch them, STOW-RS to store results.

Built on ``dicomweb_client.DICOMwebClient`` with its own retries switched off, so that one
:class:`~tasks.pacs.transport.RetryPolicy` governs both transports. Errors are sorted here: connection
errors, timeouts and HTTP 5xx are worth retrying (:class:`PacsUnavailable` in the end); 401/403 is
:class:`PacsAuthFailed` at once (retrying bad credentials only risks locking the account); a refused STOW
(HTTP 4xx, or a ``FailedSOPSequence`` in a 200/202 answer) is :class:`PacsRejected` with the status.

Credentials live in the ``requests.Session`` only (never in URLs or query parameters, never logged), and
:class:`Auth` keeps them out of its ``repr``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

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

T = TypeVar("T")

_QIDO_FIELDS = ["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription", "StudyDate",
                "NumberOfSeriesRelatedInstances"]


class PacsAuthFailed(PacsError):
    """The PACS refused our credentials (HTTP 401/403). Not retried: the answer will not change."""


@dataclass(frozen=True)
class Auth:
    """HTTP credentials: basic (``user`` + ``password``) or a bearer ``token``. Secrets stay out of ``repr``."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.token is None and (self.user is None or self.password is None):
            raise ValueError("Auth needs either a token, or both user and password")
        if self.token is not None and self.user is not None:
            raise ValueError("Auth takes a token or a user/password, not both")

    def __repr__(self) -> str:
        kind = "bearer token" if self.token is not None else f"basic user={self.user!r}"
        return f"Auth({kind}, secret hidden)"

    __str__ = __repr__

    def session(self) -> requests.Session:
        """A session that sends these credentials on every request (as a header, never in the URL)."""
        session = requests.Session()
        if self.token is not None:
            session.headers["Authorization"] = f"Bearer {self.token}"
        else:
            session.auth = (str(self.user), str(self.password))
        return session


def auth_from_env(prefix: str = "UNETFLOW_PACS", environ: dict[str, str] | None = None) -> Auth | None:
    """``<prefix>_TOKEN``, or ``<prefix>_USER`` + ``<prefix>_PASSWORD``; None when neither is set."""
    env = os.environ if environ is None else environ
    token = env.get(f"{prefix}_TOKEN")
    user, password = env.get(f"{prefix}_USER"), env.get(f"{prefix}_PASSWORD")
    if token:
        return Auth(token=token)
    if user and password:
        return Auth(user=user, password=password)
    if user or password:
        raise ValueError(f"set both {prefix}_USER and {prefix}_PASSWORD (or {prefix}_TOKEN)")
    return None


class DicomwebTransport:
    """A :class:`~tasks.pacs.transport.Transport` over DICOMweb; ``url`` is the service root
    (``http://host:8042/dicom-web``)."""

    def __init__(self, url: str, auth: Auth | None = None, verify_tls: bool = True,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"DICOMweb URL must be http(s)://host[:port]/path, got {_redact(url)!r}")
        if parts.username or parts.password:
            raise ValueError("DICOMweb URL must not carry credentials (they would end up in logs); use "
                             "UNETFLOW_PACS_TOKEN or UNETFLOW_PACS_USER/UNETFLOW_PACS_PASSWORD")
        self.url = url.rstrip("/")
        self.retry = retry
        session = auth.session() if auth is not None else requests.Session()
        session.verify = verify_tls
        self._session = session
        self._client = DICOMwebClient(self.url, session=session, timeout=retry.timeout_s)
        self._client.set_http_retry_params(retry=False)

    def __repr__(self) -> str:
        return f"DicomwebTransport({self.url!r})"

    # -- Transport ---------------------------------------------------------------------------------------
    def find_series(self, filters: SeriesFilter) -> list[SeriesRef]:
        params: dict[str, Any] = {}
        if filters.study_date is not None:
            params["StudyDate"] = filters.date_range()
        if filters.modality is not None:
            params["Modality"] = filters.modality
        rows = self._call("QIDO series search", lambda: self._client.search_for_series(
            fields=_QIDO_FIELDS, search_filters=params, get_remaining=True))
        return series_refs([_series_ref(row) for row in rows], filters)

    def fetch_series(self, ref: SeriesRef, target_dir: Path) -> list[Path]:
        Path(target_dir).mkdir(parents=True, exist_ok=True)

        def fetch() -> list[Path]:
            # The instances as the PACS sent them, written byte for byte: decoding each one into a dataset and
            # encoding it again (dicomweb-client's retrieve) cost a third of a sync's overhead over a disk read.
            response = self._session.get(f"{self.url}/studies/{ref.study_uid}/series/{ref.series_uid}",
                                         headers={"Accept": 'multipart/related; type="application/dicom"'},
                                         timeout=self.retry.timeout_s)
            response.raise_for_status()
            return [write_instance_bytes(part, target_dir) for part in multipart_parts(response)]

        return self._call(f"WADO-RS fetch of series {uid_tag(ref.series_uid)}", fetch)

    def existing_series(self, study_uid: str, series_uids: Sequence[str]) -> set[str]:
        def search() -> set[str]:
            try:  # the study's series in one QIDO (a study holds a handful), not one lookup per UID
                rows = self._client.search_for_series(study_instance_uid=study_uid, fields=["SeriesInstanceUID"],
                                                      get_remaining=True)
            except requests.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:  # unknown study
                    return set()
                raise
            return set(series_uids) & {_value(row, "0020000E") for row in rows}

        return self._call(f"QIDO lookup of the series of study {uid_tag(study_uid)}", search)

    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        if not datasets:
            return
        prepared = [ensure_file_meta(ds) for ds in datasets]
        what = f"STOW-RS of {len(datasets)} instance(s)"
        try:
            answer = self._call(what, lambda: self._client.store_instances(prepared), stow=True)
            code = 202  # dicomweb-client hides the code of a 2xx; a FailedSOPSequence comes with 202 by the standard
        except _StowRefused as exc:
            answer, code = exc.answer, exc.code
        failed = list(getattr(answer, "FailedSOPSequence", None) or [])
        if failed or code != 202:
            uids = [str(getattr(item, "ReferencedSOPInstanceUID", "")) for item in failed]
            count = f"{len(failed)} of {len(datasets)}" if failed else f"all {len(datasets)}"
            raise PacsRejected(f"STOW-RS: {count} instance(s) refused by {self.url}", _failure_status(code, answer),
                               [uid for uid in uids if uid])

    # -- error sorting -----------------------------------------------------------------------------------
    def _call(self, what: str, call: Callable[[], T], stow: bool = False) -> T:
        def attempt() -> T:
            with _sorted_errors(what, self.url, stow):
                return call()

        return with_retries(attempt, self.retry, what)


class _StowRefused(PacsError):
    """A 4xx answer to STOW-RS, with the response dataset when there is one; becomes PacsRejected in store()."""

    def __init__(self, code: int, answer: pydicom.Dataset | None) -> None:
        super().__init__(f"HTTP {code}")
        self.code, self.answer = code, answer


@contextmanager
def _sorted_errors(what: str, url: str, stow: bool) -> Iterator[None]:
    """Turn requests' exceptions into retryable / auth / refused / plain PACS errors (no bodies, no secrets).

    A TLS failure is not retried (a certificate does not fix itself); a connection that breaks mid-answer is.
    """
    try:
        yield
    except requests.exceptions.SSLError:
        raise PacsError(f"{what}: TLS verification with {url} failed (certificate, or verify_tls)") from None
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise Retryable(f"{type(exc).__name__} talking to {url}") from None
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code >= 500 or code in (408, 429):
            raise Retryable(f"HTTP {code} from {url}") from None
        if code in (401, 403):
            raise PacsAuthFailed(f"{what}: HTTP {code} from {url}: credentials missing or refused "
                                 "(set UNETFLOW_PACS_TOKEN, or UNETFLOW_PACS_USER and UNETFLOW_PACS_PASSWORD)"
                                 ) from None
        if stow:
            raise _StowRefused(code, _stow_answer(exc.response)) from None
        raise PacsError(f"{what}: HTTP {code} from {url}") from None


def multipart_parts(response: requests.Response) -> list[bytes]:
    """The bodies of a ``multipart/related`` answer (WADO-RS), or the body itself when a server sends one
    instance non-encapsulated (some do, for a single part)."""
    content_type = response.headers.get("Content-Type", "")
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/") or found is None:
        return [response.content]
    delimiter = b"--" + found.group(1).encode("ascii")
    parts = []
    for chunk in response.content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        _headers, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body[:-2] if body.endswith(b"\r\n") else body)
    return parts


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname or "").geturl() if parts.password else url


def _stow_answer(response: requests.Response | None) -> pydicom.Dataset | None:
    """The STOW-RS response dataset of a refused store, if the PACS sent a readable one."""
    if response is None or not response.content:
        return None
    try:
        return pydicom.Dataset.from_json(response.json())
    except Exception:  # noqa: BLE001 - a non-DICOM error body: keep the HTTP code only
        return None


def _failure_status(code: int, answer: pydicom.Dataset | None) -> str:
    """``HTTP 409; FailureReason 0xC000`` (one reason per distinct failure, in order)."""
    reasons: list[str] = []
    for item in getattr(answer, "FailedSOPSequence", None) or []:
        reason = getattr(item, "FailureReason", None)
        text = f"FailureReason 0x{int(reason):04X}" if reason is not None else "FailureReason missing"
        if text not in reasons:
            reasons.append(text)
    return "; ".join([f"HTTP {code}", *reasons])


def _value(row: dict[str, Any], tag: str) -> str:
    values = row.get(tag, {}).get("Value") or [""]
    value = values[0]
    return str(value.get("Alphabetic", "") if isinstance(value, dict) else value)


def _series_ref(row: dict[str, Any]) -> SeriesRef:
    count = _value(row, "00201209")
    return SeriesRef(study_uid=_value(row, "0020000D"), series_uid=_value(row, "0020000E"),
                     modality=_value(row, "00080060"), description=_value(row, "0008103E"),
                     study_date=_value(row, "00080020"), instances=int(count) if count else None)
