"""Both PACS transports against a real Orthanc: store, find (each filter), fetch, exists, refusals, outages, auth.

Every transport test runs for DICOMweb and for DIMSE, each uploading its own copy of the synthetic studies
(fresh UIDs) into the shared Orthanc, so "exactly the expected series" is checked within that copy and every
returned series is also checked against the filter.
"""

from __future__ import annotations

import copy
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from tasks.pacs.dicomweb import Auth, DicomwebTransport, PacsAuthFailed, auth_from_env
from tasks.pacs.dimse import DimseTransport, parse_dimse
from tasks.pacs.orthanc import OrthancServer, free_port
from tasks.pacs.transport import (
    PacsError,
    PacsRejected,
    PacsUnavailable,
    Retryable,
    RetryPolicy,
    SeriesFilter,
    Transport,
    with_retries,
)
from tests.pacs.conftest import BASIC_USER, PATIENT, SERIES, SLICES, Corpus, make_corpus

pytestmark = pytest.mark.slow

FAST = RetryPolicy(attempts=2, backoff_s=0.05, factor=2.0, timeout_s=10)
KINDS = ["dicomweb", "dimse"]


def make_transport(kind: str, server: OrthancServer, retry: RetryPolicy = FAST) -> Transport:
    if kind == "dicomweb":
        return DicomwebTransport(server.dicomweb_url, retry=retry)
    return DimseTransport(*parse_dimse(server.dimse), retry=retry)


@pytest.fixture(scope="module", params=KINDS)
def uploaded(request: pytest.FixtureRequest, orthanc: OrthancServer) -> tuple[str, Transport, Corpus]:
    """A transport, and a corpus it has stored (the upload itself is checked in test_store_uploads_all)."""
    transport = make_transport(request.param, orthanc)
    corpus = make_corpus(seed=KINDS.index(request.param) * 10)
    transport.store(corpus.all())
    return request.param, transport, corpus


def test_store_uploads_all(uploaded: tuple[str, Transport, Corpus], orthanc: OrthancServer) -> None:
    """Checked through Orthanc's own REST API, not through the transport under test."""
    _, _, corpus = uploaded
    for ds in corpus.all():
        found = requests.post(f"{orthanc.rest_url}/tools/lookup", data=str(ds.SOPInstanceUID), timeout=10).json()
        assert [hit["Type"] for hit in found] == ["Instance"], ds.SOPInstanceUID


FILTER_CASES: dict[str, tuple[SeriesFilter, set[str]]] = {
    "none": (SeriesFilter(), {"a_ct", "a_mr", "b_ct"}),
    "date_march": (SeriesFilter(study_date=("20240301", "20240310")), {"a_ct", "a_mr"}),
    "date_inclusive_edges": (SeriesFilter(study_date=("20240620", "20240620")), {"b_ct"}),
    "date_none_match": (SeriesFilter(study_date=("20230101", "20231231")), set()),
    "modality_ct": (SeriesFilter(modality="CT"), {"a_ct", "b_ct"}),
    "modality_mr": (SeriesFilter(modality="MR"), {"a_mr"}),
    "description_regex": (SeriesFilter(series_description=r"^T1\b"), {"a_mr"}),
    "description_alternation": (SeriesFilter(series_description=r"portal|B31f"), {"a_ct", "b_ct"}),
    "date_and_modality": (SeriesFilter(study_date=("20240101", "20240331"), modality="CT"), {"a_ct"}),
}


@pytest.mark.parametrize("case", FILTER_CASES)
def test_find_series_filters(uploaded: tuple[str, Transport, Corpus], case: str) -> None:
    _, transport, corpus = uploaded
    filters, expected = FILTER_CASES[case]
    found = transport.find_series(filters)
    ours = [ref for ref in found if ref.series_uid in corpus.uids(*corpus.datasets)]
    assert sorted(ref.series_uid for ref in ours) == sorted(corpus.uids(*expected))
    assert len({ref.series_uid for ref in found}) == len(found), "duplicate series"


def test_find_series_fields(uploaded: tuple[str, Transport, Corpus]) -> None:
    _, transport, corpus = uploaded
    by_uid = {ref.series_uid: ref for ref in transport.find_series(SeriesFilter())}
    for spec in SERIES:
        ref = by_uid[corpus.series_uid(spec.key)]
        assert (ref.study_uid, ref.modality, ref.description, ref.study_date, ref.instances) == (
            corpus.study_uid(spec.key), spec.modality, spec.description, spec.study_date, SLICES)


def test_fetch_series_writes_identical_instances(uploaded: tuple[str, Transport, Corpus], tmp_path: Path) -> None:
    _, transport, corpus = uploaded
    [ref] = [r for r in transport.find_series(SeriesFilter(modality="MR")) if r.series_uid in corpus.uids("a_mr")]
    paths = transport.fetch_series(ref, tmp_path / "fetched")
    originals = {str(ds.SOPInstanceUID): ds for ds in corpus.datasets["a_mr"]}
    assert sorted(p.name for p in paths) == sorted(f"{uid}.dcm" for uid in originals)
    assert sorted(p.name for p in (tmp_path / "fetched").iterdir()) == sorted(p.name for p in paths), "leftovers"
    for path in paths:
        got = pydicom.dcmread(path)
        want = originals[str(got.SOPInstanceUID)]
        for key in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                    "ImagePositionPatient", "PixelSpacing"):
            assert got[key].value == want[key].value, key
        np.testing.assert_array_equal(got.pixel_array, want.pixel_array)
        assert got.pixel_array.dtype == np.int16


def test_fetch_unknown_series_fails(uploaded: tuple[str, Transport, Corpus], tmp_path: Path) -> None:
    """WADO-RS answers 404, Orthanc's C-GET 0xC000: a plain PacsError (not retried, not 'unavailable')."""
    _, transport, corpus = uploaded
    ref = transport.find_series(SeriesFilter())[0]
    ghost = type(ref)(ref.study_uid, "1.2.826.0.1.3680043.99999.1", "CT", "", "", None)
    start = time.monotonic()
    with pytest.raises(PacsError) as caught:
        transport.fetch_series(ghost, tmp_path)
    assert not isinstance(caught.value, PacsUnavailable)
    assert time.monotonic() - start < 1.0
    assert list(tmp_path.iterdir()) == []


def test_existing_series(uploaded: tuple[str, Transport, Corpus]) -> None:
    _, transport, corpus = uploaded
    study, series = corpus.study_uid("b_ct"), corpus.series_uid("b_ct")
    assert transport.existing_series(study, [series]) == {series}
    assert transport.existing_series(study, [series + ".77"]) == set()
    assert transport.existing_series(study, [series + ".77", series]) == {series}  # one lookup for several
    assert transport.existing_series(corpus.study_uid("a_ct"), [series]) == set()  # right series, wrong study
    assert transport.existing_series("1.2.826.0.1.3680043.99999.2", ["1.2.826.0.1.3680043.99999.3"]) == set()


def _no_patient_identity(text: str) -> None:
    for secret in (*PATIENT, PATIENT[0].replace("^", " ")):
        assert secret not in text


def test_store_without_study_uid_is_rejected(uploaded: tuple[str, Transport, Corpus], orthanc: OrthancServer) -> None:
    """Orthanc cannot index an instance without StudyInstanceUID: STOW answers 400 + FailedSOPSequence
    (0xC000), C-STORE answers 0xA700."""
    kind, transport, _ = uploaded
    bad = copy.deepcopy(make_corpus(seed=99).datasets["a_ct"][0])
    del bad.StudyInstanceUID
    with pytest.raises(PacsRejected) as caught:
        transport.store([bad])
    expected = "HTTP 400; FailureReason 0xC000" if kind == "dicomweb" else "0xA700"
    assert caught.value.status == expected
    assert expected in str(caught.value)
    _no_patient_identity(str(caught.value))
    found = requests.post(f"{orthanc.rest_url}/tools/lookup", data=str(bad.SOPInstanceUID), timeout=10).json()
    assert found == []


def test_store_unsupported_sop_class_is_rejected_over_dimse(orthanc: OrthancServer) -> None:
    """Orthanc (UnknownSopClassAccepted false) refuses the presentation context: not retried, status kept."""
    bad = copy.deepcopy(make_corpus(seed=98).datasets["a_ct"][0])
    bad.SOPClassUID = bad.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.99999.4"
    transport = make_transport("dimse", orthanc, RetryPolicy(attempts=3, backoff_s=1.0))
    start = time.monotonic()
    with pytest.raises(PacsRejected) as caught:
        transport.store([bad])
    assert time.monotonic() - start < 1.0, "a refusal must not be retried"
    assert caught.value.status == "presentation context result 0x03 (abstract syntax not supported)"


@pytest.mark.parametrize("kind", KINDS)
def test_store_mixed_batch_reports_the_refused_instance(kind: str, orthanc: OrthancServer) -> None:
    """Both transports offer every instance: the good ones are stored, the refused one is named."""
    good = make_corpus(seed=70 + KINDS.index(kind)).datasets["b_ct"]
    bad = copy.deepcopy(make_corpus(seed=72).datasets["b_ct"][0])
    del bad.StudyInstanceUID
    with pytest.raises(PacsRejected, match=f"1 of {len(good) + 1} instance") as caught:
        make_transport(kind, orthanc).store([good[0], bad, *good[1:]])
    assert caught.value.failed_instances == (str(bad.SOPInstanceUID),)
    for ds in good:
        assert requests.post(f"{orthanc.rest_url}/tools/lookup", data=str(ds.SOPInstanceUID), timeout=10).json()


def test_store_mixed_sop_classes_over_dimse(orthanc: OrthancServer) -> None:
    """One SOP class refused at association time does not stop the instances whose class was accepted."""
    good = make_corpus(seed=97).datasets["b_ct"]
    bad = copy.deepcopy(good[1])
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = good[1].SOPInstanceUID + ".5"
    bad.SOPClassUID = bad.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.99999.5"
    with pytest.raises(PacsRejected, match="1 of 5") as caught:
        make_transport("dimse", orthanc).store([*good, bad])
    assert caught.value.status.startswith("presentation context result 0x03")
    assert caught.value.failed_instances == (str(bad.SOPInstanceUID),)


@pytest.mark.parametrize("kind", KINDS)
def test_closed_port_is_unavailable_after_retries(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    closed = OrthancServer(http_port=free_port(), dicom_port=free_port())  # never started: nothing listens
    policy = RetryPolicy(attempts=3, backoff_s=0.2, factor=2.0, timeout_s=2)
    transport = make_transport(kind, closed, policy)
    caplog.set_level(logging.WARNING, logger="tasks.pacs.transport")
    start = time.monotonic()
    with pytest.raises(PacsUnavailable, match="after 3 attempts") as caught:
        transport.find_series(SeriesFilter(modality="CT"))
    elapsed = time.monotonic() - start
    assert 0.6 <= elapsed < 5.0, elapsed  # waits 0.2 + 0.4 s between the three attempts
    assert sum("retrying in" in r.getMessage() for r in caplog.records) == 2
    assert str(closed.http_port if kind == "dicomweb" else closed.dicom_port) in str(caught.value)
    closed.stop()  # only drops its temporary folder


@pytest.mark.parametrize("kind", KINDS)
def test_silent_server_times_out_and_is_unavailable(kind: str) -> None:
    """A peer that accepts TCP but never answers (a hung PACS): each attempt ends at timeout_s, then retried."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever reads or writes
        port = silent.getsockname()[1]
        server = OrthancServer(http_port=port, dicom_port=port)
        policy = RetryPolicy(attempts=2, backoff_s=0.1, factor=2.0, timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(PacsUnavailable, match="after 2 attempts"):
            make_transport(kind, server, policy).existing_series("1.2.3", ["1.2.3.4"])
        elapsed = time.monotonic() - start
        server.stop()
    assert 2 * 0.5 + 0.1 <= elapsed < 6.0, elapsed


def test_with_retries_passes_refusals_through_at_once() -> None:
    calls: list[int] = []

    def refuse() -> None:
        calls.append(1)
        raise PacsRejected("no", "0xA700")

    with pytest.raises(PacsRejected):
        with_retries(refuse, RetryPolicy(attempts=4, backoff_s=0.01), "store")
    assert len(calls) == 1


def test_with_retries_recovers_and_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    outcomes: list[Callable[[], str]] = [lambda: _raise(Retryable("flaky")), lambda: _raise(Retryable("flaky")),
                                         lambda: "ok"]
    assert with_retries(lambda: outcomes.pop(0)(), RetryPolicy(attempts=4, backoff_s=0.5, factor=3), "x") == "ok"
    assert sleeps == [0.5, 1.5]


def _raise(exc: Exception) -> str:
    raise exc


# -- authentication (DICOMweb) ------------------------------------------------------------------------------
def test_dicomweb_without_credentials_fails_clearly_and_fast(orthanc_auth: OrthancServer) -> None:
    transport = DicomwebTransport(orthanc_auth.dicomweb_url, retry=RetryPolicy(attempts=4, backoff_s=1.0))
    start = time.monotonic()
    with pytest.raises(PacsAuthFailed, match="HTTP 401.*credentials"):
        transport.find_series(SeriesFilter())
    assert time.monotonic() - start < 1.0, "401 must not be retried"


def test_dicomweb_wrong_password_does_not_leak(orthanc_auth: OrthancServer) -> None:
    auth = Auth(user=BASIC_USER[0], password="wrong-" + BASIC_USER[1])
    transport = DicomwebTransport(orthanc_auth.dicomweb_url, auth=auth, retry=FAST)
    with pytest.raises(PacsAuthFailed) as caught:
        transport.store(make_corpus(seed=5).datasets["a_ct"])
    text = f"{caught.value} {caught.value!r} {auth!r} {auth} {transport!r}"
    assert BASIC_USER[1] not in text


def test_dicomweb_credentials_from_env_work(orthanc_auth: OrthancServer, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("UNETFLOW_PACS_USER", BASIC_USER[0])
    monkeypatch.setenv("UNETFLOW_PACS_PASSWORD", BASIC_USER[1])
    monkeypatch.delenv("UNETFLOW_PACS_TOKEN", raising=False)
    auth = auth_from_env()
    assert auth is not None and BASIC_USER[1] not in repr(auth) and BASIC_USER[1] not in str(auth)
    transport = DicomwebTransport(orthanc_auth.dicomweb_url, auth=auth, retry=FAST)
    corpus = make_corpus(seed=6)
    transport.store(corpus.datasets["b_ct"])
    [ref] = [r for r in transport.find_series(SeriesFilter(modality="CT")) if r.series_uid == corpus.series_uid("b_ct")]
    assert len(transport.fetch_series(ref, tmp_path)) == SLICES
    assert transport.existing_series(ref.study_uid, [ref.series_uid]) == {ref.series_uid}


def test_auth_from_env_variants() -> None:
    token = auth_from_env(environ={"UNETFLOW_PACS_TOKEN": "tok-SECRET"})
    assert token is not None and "tok-SECRET" not in repr(token)
    assert token.session().headers["Authorization"] == "Bearer tok-SECRET"
    basic = auth_from_env("X", environ={"X_USER": "u", "X_PASSWORD": "pw-SECRET"})
    assert basic is not None and basic.session().auth == ("u", "pw-SECRET") and "pw-SECRET" not in repr(basic)
    assert auth_from_env(environ={}) is None
    with pytest.raises(ValueError, match="UNETFLOW_PACS_PASSWORD"):
        auth_from_env(environ={"UNETFLOW_PACS_USER": "u"})


# -- parsing and validation ---------------------------------------------------------------------------------
def test_parse_dimse() -> None:
    assert parse_dimse("pacs.example.org:104:MAIN_PACS") == ("pacs.example.org", 104, "MAIN_PACS")
    assert parse_dimse("127.0.0.1:4242:ORTHANC") == ("127.0.0.1", 4242, "ORTHANC")
    for bad in ("pacs:104", "pacs::PACS", ":104:PACS", "pacs:port:PACS", "pacs:70000:PACS", "pacs:104:",
                "pacs:104:THIS_AET_IS_TOO_LONG", "pacs:104:BACK\\SLASH"):
        with pytest.raises(ValueError, match="DIMSE|AE title"):
            parse_dimse(bad)


def test_series_filter_validation() -> None:
    with pytest.raises(ValueError, match="reversed"):
        SeriesFilter(study_date=("20240102", "20240101"))
    with pytest.raises(ValueError, match="YYYYMMDD"):
        SeriesFilter(study_date=("2024-01-01", "20240101"))
    with pytest.raises(Exception, match="unterminated|missing"):
        SeriesFilter(series_description="(unclosed")


@pytest.mark.parametrize("kind", KINDS)
def test_store_dataset_without_file_meta(kind: str, orthanc: OrthancServer) -> None:
    """What a results writer may hand over: a bare Dataset. The transport adds file meta to a copy only."""
    ds = make_corpus(seed=40 + KINDS.index(kind)).datasets["a_ct"][0]
    del ds.file_meta
    del ds.preamble
    make_transport(kind, orthanc).store([ds])
    assert getattr(ds, "file_meta", None) is None, "the caller's dataset was modified"
    found = requests.post(f"{orthanc.rest_url}/tools/lookup", data=str(ds.SOPInstanceUID), timeout=10).json()
    assert [hit["Type"] for hit in found] == ["Instance"]


def test_dicomweb_url_with_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="must not carry credentials") as caught:
        DicomwebTransport("http://alice:pw-SECRET@127.0.0.1:8042/dicom-web")
    assert "pw-SECRET" not in str(caught.value)
    with pytest.raises(ValueError, match="http"):
        DicomwebTransport("127.0.0.1:8042/dicom-web")
