"""``sync_pacs`` against a real Orthanc: results stored once and in the right place, reruns, new model versions,
corrupt series remembered, an outage mid-sync, and no patient data kept or logged.

Each test gets an empty Orthanc (``fresh_orthanc``), so counts before/after are exact. The transports are the
real ones; ``recording`` only notes what ``store`` was given (and can stop the server from there).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from tasks.pacs.dicomweb import DicomwebTransport
from tasks.pacs.dimse import DimseTransport, parse_dimse
from tasks.pacs.orthanc import OrthancServer
from tasks.pacs.outcomes import SyncSummary
from tasks.pacs.results import result_pseudonym, result_uids
from tasks.pacs.steps import LOCALIZER_REASON, unsupported_reason
from tasks.pacs.sync import SyncSettings, sync_pacs
from tasks.pacs.transport import RetryPolicy, SeriesFilter, SeriesRef
from tests.infer.helpers import ThresholdNet, plan_for, settings
from tests.pacs.conftest import PATIENT, SeriesSpec, make_series

pytestmark = pytest.mark.slow

FAST = RetryPolicy(attempts=2, backoff_s=0.05, factor=2.0, timeout_s=5)
SALT = "test-salt"
MODEL = "lesionnet"
PLAN = plan_for(3, [16, 16, 4]).model_copy(update={"channel_modalities": ("CT",)})
#: 3 CT series in two studies and an MR series the CT model skips.
SPECS = (SeriesSpec("a_ct", "20240305", "CT", "Thorax", "A"), SeriesSpec("a_ct2", "20240305", "CT", "Thorax 2", "A"),
         SeriesSpec("a_mr", "20240305", "MR", "T1 axial", "A"), SeriesSpec("b_ct", "20240620", "CT", "Abdomen", "B"))


# ------------------------------------------------------------------------------------------------ helpers
def make_studies(specs: tuple[SeriesSpec, ...] = SPECS, seed: int = 0) -> dict[str, list[pydicom.Dataset]]:
    root = pydicom.uid.generate_uid(prefix=None)[:40]
    out = {}
    for i, spec in enumerate(specs):
        study = f"{root}.{ord(spec.study_key)}"
        out[spec.key] = make_series(spec, study, f"{study}.{i + 1}", f"{root}.{i + 1}", seed + i)
    return out


def upload(server: OrthancServer, datasets: list[pydicom.Dataset]) -> None:
    """Through Orthanc's REST API, not through a transport under test."""
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        requests.post(f"{server.rest_url}/instances", data=buffer.getvalue(), timeout=10).raise_for_status()


def recording(kind: str, server: OrthancServer, after_store: Callable[[int], None] | None = None,
              before_fetch: Callable[[int], None] | None = None):
    """A real transport that also notes the modality of everything it stores; ``after_store(n)`` is called after
    its n-th store, ``before_fetch(n)`` before its n-th fetch (n from 1)."""
    base = DicomwebTransport if kind == "dicomweb" else DimseTransport

    class Recording(base):  # type: ignore[misc, valid-type]
        stored: list[str] = []
        fetches = 0

        def fetch_series(self, ref, target_dir):  # noqa: ANN001, ANN202
            self.fetches += 1
            if before_fetch is not None:
                before_fetch(self.fetches)
            return super().fetch_series(ref, target_dir)

        def store(self, datasets):  # noqa: ANN001, ANN202
            super().store(datasets)
            self.stored.extend(str(ds.Modality) for ds in datasets)
            if after_store is not None:
                after_store(len(self.stored))

    if kind == "dicomweb":
        transport = Recording(server.dicomweb_url, retry=FAST)
    else:
        transport = Recording(*parse_dimse(server.dimse), retry=FAST)
    transport.stored = []
    return transport


def sync(transport, work_dir: Path, version: str = "1", model: ThresholdNet | None = None) -> SyncSummary:  # noqa: ANN001
    config = SyncSettings(SeriesFilter(), work_dir, SALT, MODEL, version, settings())
    return sync_pacs(transport, model or ThresholdNet(3, level=500.0), PLAN, config)


def by_name(summary: SyncSummary) -> dict[str, tuple[str, str]]:
    return {o.series: (o.status, o.reason) for o in summary.outcomes}


def name_of(series: list[pydicom.Dataset]) -> str:
    return result_pseudonym(SALT, str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID))


def instance_count(server: OrthancServer) -> int:
    return int(requests.get(f"{server.rest_url}/statistics", timeout=10).json()["CountInstances"])


def orthanc_series(server: OrthancServer, series_uid: str) -> list[pydicom.Dataset]:
    """Every instance of a series as Orthanc holds it."""
    found = requests.post(f"{server.rest_url}/tools/find", timeout=10, json={
        "Level": "Instance", "Query": {"SeriesInstanceUID": series_uid}}).json()
    return [pydicom.dcmread(io.BytesIO(requests.get(f"{server.rest_url}/instances/{i}/file", timeout=10).content))
            for i in found]


def delete_series(server: OrthancServer, series_uid: str) -> None:
    [orthanc_id] = requests.post(f"{server.rest_url}/tools/lookup", data=series_uid, timeout=10).json()
    requests.delete(f"{server.rest_url}/series/{orthanc_id['ID']}", timeout=10).raise_for_status()


def assert_no_phi(work_dir: Path, studies: dict[str, list[pydicom.Dataset]], records: list[logging.LogRecord],
                  loggers: tuple[str, ...] = ("unetflow", "tasks")) -> None:
    """No patient name/ID and no source UID in any file under ``work_dir`` (gzip opened) or in our log lines."""
    secrets = {*PATIENT, "Jane"}
    for ds in (ds for series in studies.values() for ds in series):
        secrets |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    files = [p for p in work_dir.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix == ".dcm" or "tmp" in p.relative_to(work_dir).parts]
    for path in files:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.name.endswith(".gz") else data
        leaked = [s for s in secrets if s.encode() in data]
        assert not leaked, f"{path.relative_to(work_dir)} holds {leaked}"
    ours = [r for r in records if r.name.split(".")[0] in loggers]
    assert ours
    for record in ours:
        message = record.getMessage()
        assert not [s for s in secrets if s in message], message


# ------------------------------------------------------------------------------------------ round trip
def check_seg_and_sr(server: OrthancServer, source: list[pydicom.Dataset], work_dir: Path, version: str) -> None:
    uids = result_uids(str(source[0].SeriesInstanceUID), MODEL, version)
    [seg] = orthanc_series(server, uids.seg_series)
    [sr] = orthanc_series(server, uids.sr_series)
    assert seg.Modality == "SEG" and sr.Modality == "SR"
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert (seg.Rows, seg.Columns) == (source[0].Rows, source[0].Columns)
    assert int(seg.NumberOfFrames) == len(source)
    positions = sorted(tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                       for f in seg.PerFrameFunctionalGroupsSequence)
    assert positions == sorted(tuple(float(v) for v in ds.ImagePositionPatient) for ds in source)
    assert str(seg.SOPInstanceUID) in json.dumps(sr.to_json_dict()), "the SR does not reference the SEG"
    result = json.loads((work_dir / "results" / f"{name_of(source)}.json").read_text())
    assert result["model"] == {"name": MODEL, "version": version}
    assert sr_volumes(sr) == pytest.approx(result["volumes_ml"]) and result["volumes_ml"]["lesion"] > 0


def sr_volumes(sr: pydicom.Dataset) -> dict[str, float]:
    """{tracking identifier (the class name): volume} from the TID 1500 groups."""
    out = {}
    for group in (item for c in sr.ContentSequence if "ContentSequence" in c for item in c.ContentSequence):
        items = list(getattr(group, "ContentSequence", []))
        names = [i.TextValue for i in items if i.ValueType == "TEXT"]
        values = [float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"]
        if names and values:
            out[names[0]] = values[0]
    return out


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_round_trip_rerun_and_new_version(kind: str, fresh_orthanc: OrthancServer, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    studies = make_studies()
    upload(fresh_orthanc, [ds for series in studies.values() for ds in series])
    transport, work_dir = recording(kind, fresh_orthanc), tmp_path / "work"
    leftover = work_dir / "tmp" / "dcm-killed" / "dicom" / "00001.dcm"  # a sync killed by SIGKILL left this
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"fetched earlier")

    first = sync(transport, work_dir)
    assert not leftover.exists()
    cts = ("a_ct", "a_ct2", "b_ct")
    assert by_name(first)[name_of(studies["a_mr"])] == ("skipped", "modality MR: the model reads CT")
    assert {by_name(first)[name_of(studies[k])] for k in cts} == {("done", "")}
    assert (first.done, first.skipped, first.failed) == (3, 1, 0) and not first.all_failed
    assert sorted(transport.stored) == ["SEG"] * 3 + ["SR"] * 3
    for key in cts:
        check_seg_and_sr(fresh_orthanc, studies[key], work_dir, "1")
        assert (work_dir / "results" / f"{name_of(studies[key])}.nii.gz").is_file()
    assert json.loads((work_dir / "summary.json").read_text())["counts"] == {"done": 3, "skipped": 1, "failed": 0}

    before, transport.stored = instance_count(fresh_orthanc), []
    second = sync(transport, work_dir)
    assert transport.stored == [] and instance_count(fresh_orthanc) == before
    assert second.done == second.failed == 0 and second.skipped == 4 + 6  # + the SEGs and SRs, not images
    assert {by_name(second)[name_of(studies[k])] for k in cts} == {("skipped", f"already segmented by {MODEL} v1")}

    third = sync(transport, work_dir, version="2")
    assert third.done == 3 and sorted(transport.stored) == ["SEG"] * 3 + ["SR"] * 3
    for key in cts:
        check_seg_and_sr(fresh_orthanc, studies[key], work_dir, "2")
        assert orthanc_series(fresh_orthanc, result_uids(str(studies[key][0].SeriesInstanceUID), MODEL, "1").seg_series)
    assert len(list((work_dir / "runs").glob("*.json"))) == 3
    assert_no_phi(work_dir, studies, caplog.records)


def test_only_the_missing_result_is_stored(fresh_orthanc: OrthancServer, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """A sync killed between SEG and SR (or a SEG deleted on the PACS): the next one stores only what is missing."""
    studies = make_studies(SPECS[:1])
    caplog.set_level(logging.DEBUG)
    upload(fresh_orthanc, studies["a_ct"])
    transport, work_dir = recording("dicomweb", fresh_orthanc), tmp_path / "work"
    assert sync(transport, work_dir).done == 1
    uids = result_uids(str(studies["a_ct"][0].SeriesInstanceUID), MODEL, "1")
    for kind, series_uid in (("SR", uids.sr_series), ("SEG", uids.seg_series)):
        delete_series(fresh_orthanc, series_uid)
        transport.stored = []
        assert sync(transport, work_dir).done == 1
        assert transport.stored == [kind]
        check_seg_and_sr(fresh_orthanc, studies["a_ct"], work_dir, "1")
    assert_no_phi(work_dir, studies, caplog.records)


# -------------------------------------------------------------------------------------- corrupt series
def corrupt(studies: dict[str, list[pydicom.Dataset]]) -> None:
    """a_ct2: one slice of 8×8 (two series mixed); b_ct: one slice in another frame of reference."""
    odd = studies["a_ct2"][1]
    odd.Rows = odd.Columns = 8
    odd.PixelData = np.zeros((8, 8), np.int16).tobytes()
    studies["b_ct"][2].FrameOfReferenceUID = f"{studies['b_ct'][2].FrameOfReferenceUID}.7"


def test_corrupt_series_failed_then_remembered(fresh_orthanc: OrthancServer, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    studies = make_studies()
    corrupt(studies)
    upload(fresh_orthanc, [ds for series in studies.values() for ds in series])
    transport, work_dir = recording("dicomweb", fresh_orthanc), tmp_path / "work"

    first = by_name(sync(transport, work_dir))
    assert first[name_of(studies["a_ct"])] == ("done", "")
    assert first[name_of(studies["a_ct2"])][0] == "failed" and "Rows" in first[name_of(studies["a_ct2"])][1]
    assert first[name_of(studies["b_ct"])][0] == "failed"
    assert "frames of reference" in first[name_of(studies["b_ct"])][1]
    assert sorted(transport.stored) == ["SEG", "SR"]

    transport.stored = []
    second = by_name(sync(transport, work_dir))
    for key in ("a_ct2", "b_ct"):
        reason = first[name_of(studies[key])][1]
        assert second[name_of(studies[key])] == ("skipped", f"failed before and unchanged: {reason}")
    assert transport.stored == []

    first_slice = studies["a_ct2"][0]  # one more instance: the series changed, so it is tried again
    extra = make_series(SPECS[1], str(first_slice.StudyInstanceUID), str(first_slice.SeriesInstanceUID), "1.2", 9)[:1]
    extra[0].SOPInstanceUID = extra[0].file_meta.MediaStorageSOPInstanceUID = f"{first_slice.SeriesInstanceUID}.99"
    extra[0].FrameOfReferenceUID, extra[0].ImagePositionPatient = first_slice.FrameOfReferenceUID, [-8, -8, 10]
    upload(fresh_orthanc, extra)
    third = by_name(sync(transport, work_dir))
    assert third[name_of(studies["a_ct2"])][0] == "failed"
    assert third[name_of(studies["b_ct"])][0] == "skipped"
    assert_no_phi(work_dir, {**studies, "extra": extra}, caplog.records)


def test_next_series_fetched_while_one_is_segmented(fresh_orthanc: OrthancServer, tmp_path: Path) -> None:
    """The model does not wait for the PACS: its first window waits until the second series is being fetched
    (a sync that fetched only after storing would keep it waiting, then fail the assertion)."""
    studies = make_studies(tuple(s for s in SPECS if s.modality == "CT"))
    upload(fresh_orthanc, [ds for series in studies.values() for ds in series])
    second_fetch, waited = threading.Event(), []

    class WaitingNet(ThresholdNet):
        def forward_parts(self, x):  # noqa: ANN001, ANN202
            if not waited:
                waited.append(second_fetch.wait(timeout=20))
            return super().forward_parts(x)

    transport = recording("dicomweb", fresh_orthanc, before_fetch=lambda n: n == 2 and second_fetch.set())
    summary = sync(transport, tmp_path / "work", model=WaitingNet(3, level=500.0))
    assert summary.done == 3 and waited == [True]


def test_localizer_is_skipped_not_failed_and_not_fetched_again(fresh_orthanc: OrthancServer, tmp_path: Path) -> None:
    """Every CT study holds a scout (AP and lateral projections): not a failure, and not fetched every run."""
    studies = make_studies((SeriesSpec("scout", "20240305", "CT", "Topogram 0.6 T20f", "A"), SPECS[0]))
    scout = studies["scout"][:2]
    for ds in scout:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout[1].ImageOrientationPatient, scout[1].ImagePositionPatient = [0, 1, 0, 0, 0, -1], [0, -8, 8]  # lateral
    studies["scout"] = scout
    upload(fresh_orthanc, [ds for series in studies.values() for ds in series])
    transport, work_dir = recording("dicomweb", fresh_orthanc), tmp_path / "work"
    first = by_name(sync(transport, work_dir))
    assert first[name_of(scout)] == ("skipped", LOCALIZER_REASON)
    assert first[name_of(studies["a_ct"])] == ("done", "") and sorted(transport.stored) == ["SEG", "SR"]
    transport = recording("dicomweb", fresh_orthanc)
    second = by_name(sync(transport, work_dir))
    assert second[name_of(scout)] == ("skipped", f"skipped before and unchanged: {LOCALIZER_REASON}")
    assert transport.fetches == 0 and transport.stored == []


# ------------------------------------------------------------------------------------------------ outage
def test_outage_mid_sync_then_resume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    studies = make_studies(tuple(s for s in SPECS if s.modality == "CT"))
    server = OrthancServer(tmp_path / "orthanc").start()
    try:
        upload(server, [ds for series in studies.values() for ds in series])

        def stop_after_first_series(stores: int) -> None:
            if stores == 2:  # the first series' SEG and SR are stored; the others are fetched or being fetched
                server.stop()

        transport, work_dir = recording("dicomweb", server, stop_after_first_series), tmp_path / "work"
        first = sync(transport, work_dir)
        assert (first.done, first.failed) == (1, 2) and not first.all_failed
        assert sorted(transport.stored) == ["SEG", "SR"]
        assert {o.reason.split(":")[0] for o in first.outcomes if o.status == "failed"} == {"PACS unavailable"}
        [done] = [o.series for o in first.outcomes if o.status == "done"]

        server = OrthancServer(tmp_path / "orthanc", http_port=server.http_port, dicom_port=server.dicom_port).start()
        transport = recording("dicomweb", server)
        second = sync(transport, work_dir)
        assert by_name(second)[done] == ("skipped", f"already segmented by {MODEL} v1")
        assert second.done == 2 and sorted(transport.stored) == ["SEG", "SEG", "SR", "SR"]
        for series in studies.values():
            check_seg_and_sr(server, series, work_dir, "1")
    finally:
        server.stop()
    assert_no_phi(work_dir, studies, caplog.records, loggers=("unetflow",))  # the transport's retries name UIDs


def test_all_failed_only_when_every_series_failed(tmp_path: Path) -> None:
    """An unreachable PACS: the search itself raises; an empty sync is not 'all failed'."""
    from tasks.pacs.outcomes import SeriesOutcome

    assert not SyncSummary([], "t", MODEL, "1").all_failed
    failed = SeriesOutcome("dcm-x", "failed", "r", 0.0)
    assert SyncSummary([failed], "t", MODEL, "1").all_failed
    assert not SyncSummary([failed, SeriesOutcome("dcm-y", "skipped", "r", 0.0)], "t", MODEL, "1").all_failed
    closed = DicomwebTransport("http://127.0.0.1:9/dicom-web", retry=RetryPolicy(attempts=1, timeout_s=1))
    from tasks.pacs.transport import PacsUnavailable

    with pytest.raises(PacsUnavailable):
        sync(closed, tmp_path / "work")


def test_one_sync_per_work_dir(tmp_path: Path) -> None:
    import fcntl

    (tmp_path / "work").mkdir()
    with open(tmp_path / "work" / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        closed = DicomwebTransport("http://127.0.0.1:9/dicom-web", retry=RetryPolicy(attempts=1, timeout_s=1))
        with pytest.raises(RuntimeError, match="another pacs-sync"):
            sync(closed, tmp_path / "work")


# ----------------------------------------------------------------------------------------- what is skipped
def ref(modality: str = "CT", instances: int | None = 4) -> SeriesRef:
    return SeriesRef("1.2.3", "1.2.3.4", modality, "", "20240101", instances)


def test_unsupported_reason() -> None:
    assert unsupported_reason(ref(), PLAN) is None
    assert unsupported_reason(ref("ct"), PLAN) is None  # case-insensitive
    assert unsupported_reason(ref(instances=None), PLAN) is None  # unknown count: fetch and see
    assert "MR" in unsupported_reason(ref("MR"), PLAN)
    assert "not an image" in unsupported_reason(ref("SEG"), PLAN)
    assert "not an image" in unsupported_reason(ref("SR"), plan_for(3, [16, 16, 4]))  # any modality, but images
    assert unsupported_reason(ref("MR"), plan_for(3, [16, 16, 4])) is None  # no channel_modalities: any image
    assert "1 instance" in unsupported_reason(ref(instances=1), PLAN)
    assert unsupported_reason(ref(instances=1), plan_for(2, [16, 16]).model_copy(
        update={"channel_modalities": ("CT",)})) is None
    two = plan_for(3, [16, 16, 4], in_channels=2).model_copy(update={"channel_modalities": ("CT", "CT")})
    assert "2 channels" in unsupported_reason(ref(), two)
