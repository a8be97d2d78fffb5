"""Issue #13: a DICOM series whose SEG cannot be written keeps its mask, is done, and says why there is no SEG.

A series without FrameOfReferenceUID (older exports, series written by ITK) is read and segmented like
any other, but highdicom refuses to make a SEG for it. The case must still be done — its report is the
completion marker, so a rerun skips it — while only the SEG step degrades: an output folder that cannot
be written still fails the case.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np

from tasks.imaging.geometry import LPS_TO_RAS
from tasks.inference.batch import run_batch
from tests.infer.helpers import ThresholdNet, blobs, drop_frame_of_reference, plan_for, settings
from tests.ingest.makers import write_series

NOFOR = dict(spacing=(0.9, 0.6, 2.0), origin=(4.0, -12.0, 40.0), orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))


def expected_affine(spacing: tuple[float, float, float], origin: tuple[float, float, float],
                    orientation: tuple[float, ...]) -> np.ndarray:
    """The RAS affine the slice headers written by ``write_series`` describe (X = columns, Y = rows)."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([row * spacing[0], col * spacing[1], np.cross(row, col) * spacing[2]])
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def inbox(root: Path) -> tuple[list, list, np.ndarray]:
    """A normal series and one without FrameOfReferenceUID side by side; returns both and the latter's voxels."""
    normal = write_series(root / "normal" / "series", (blobs((6, 14, 12), seed=3) * 200).astype(np.uint16) + 1024)
    volume = (blobs((5, 10, 9), seed=4, radius=2.5) * 200).astype(np.uint16) + 1024  # Z×Y×X stored values
    nofor = write_series(root / "nofor" / "series", volume, **NOFOR)
    drop_frame_of_reference(nofor)
    return normal, nofor, volume


def run(tmp_path: Path) -> dict:
    outcomes = run_batch(tmp_path / "in", tmp_path / "out", settings(roi_size=(8, 8, 8), dicom_seg=True),
                         ThresholdNet(3, level=100.0), plan_for(3, [8, 8, 8]))
    return {o.source.split("/")[0]: o for o in outcomes}


def test_series_without_frame_of_reference_is_done_without_seg(tmp_path, caplog):
    normal, nofor, volume = inbox(tmp_path / "in")
    assert all("FrameOfReferenceUID" not in ds for ds in nofor)
    with caplog.at_level(logging.WARNING, logger="unetflow.infer"):
        by_source = run(tmp_path)
    assert set(by_source) == {"normal", "nofor"}
    assert {o.status for o in by_source.values()} == {"done"}, [o.error for o in by_source.values()]
    good, bare = by_source["normal"], by_source["nofor"]

    # The normal series: a SEG highdicom reads back, on its source series.
    seg = hd.seg.segread(good.seg)
    assert seg.FrameOfReferenceUID == normal[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == normal[0].SeriesInstanceUID
    assert good.dicom_seg == f"{good.case_id}.seg.dcm" == Path(good.seg).name

    # The series without a frame of reference: its mask on the series' grid, no SEG, and why.
    mask = nib.load(bare.mask)
    assert mask.shape == (volume.shape[2], volume.shape[1], volume.shape[0])
    np.testing.assert_allclose(mask.affine, expected_affine(**NOFOR), atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj), (volume.transpose(2, 1, 0) > 1124).astype(np.uint8))
    assert not (tmp_path / "out" / f"{bare.case_id}.seg.dcm").exists() and bare.seg == ""
    report = json.loads((tmp_path / "out" / f"{bare.case_id}.json").read_text())
    reason = report["dicom_seg_error"]
    assert report["dicom_seg"] is None and "seg" not in report["outputs"]
    assert reason.startswith("nofor/series/IM0000: ") and "Frame Of Reference UID" in reason, reason
    assert str(tmp_path) not in reason
    good_report = json.loads((tmp_path / "out" / f"{good.case_id}.json").read_text())
    assert good_report["dicom_seg"] == good.dicom_seg and good_report["dicom_seg_error"] is None

    rows = {row["case_id"]: row for row in csv.DictReader((tmp_path / "out" / "summary.csv").open())}
    assert rows[bare.case_id]["dicom_seg"] == f"not written: {reason}" and rows[bare.case_id]["status"] == "done"
    assert rows[good.case_id]["dicom_seg"] == good.dicom_seg
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (2, 0)
    assert summary["seg_not_written"] == [{"case_id": bare.case_id, "reason": reason}]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(bare.case_id in w and "DICOM SEG not written" in w for w in warnings), warnings

    # A rerun skips both: the report is the completion marker, and the reason is still reported.
    written = Path(bare.mask).stat().st_mtime_ns
    again = run(tmp_path)
    assert {o.status for o in again.values()} == {"skipped"}
    assert again["nofor"].dicom_seg == f"not written: {reason}" and again["normal"].dicom_seg == good.dicom_seg
    assert Path(bare.mask).stat().st_mtime_ns == written
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped"] == 2 and summary["seg_not_written"] == [{"case_id": bare.case_id, "reason": reason}]


def test_an_output_folder_that_cannot_take_the_seg_still_fails_the_case(tmp_path, monkeypatch):
    """Only the sources' refusal degrades: a failing write (disk full) fails the case, and no report marks it done."""
    import tasks.inference.dicom_seg as dicom_seg

    write_series(tmp_path / "in" / "normal" / "series", (blobs((6, 14, 12), seed=3) * 200).astype(np.uint16) + 1024)

    def full_disk(path: Path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dicom_seg, "atomic_path", full_disk)
    (outcome,) = run(tmp_path).values()
    assert outcome.status == "failed" and "No space left on device" in outcome.error
    assert not list((tmp_path / "out").glob("dcm-*.json"))


def test_seg_switched_off_is_no_error(tmp_path):
    write_series(tmp_path / "in" / "normal" / "series", (blobs((6, 14, 12), seed=3) * 200).astype(np.uint16) + 1024)
    (outcome,) = run_batch(tmp_path / "in", tmp_path / "out", settings(roi_size=(8, 8, 8), dicom_seg=False),
                           ThresholdNet(3, level=100.0), plan_for(3, [8, 8, 8]))
    report = json.loads((tmp_path / "out" / f"{outcome.case_id}.json").read_text())
    assert outcome.status == "done" and outcome.dicom_seg == "" and report["dicom_seg_error"] is None
