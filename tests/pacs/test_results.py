"""The results ``pacs-sync`` stores back: deterministic UIDs, a SEG on the source series, a TID 1500 volume SR.

Everything is real DICOM: a synthetic CT series written by pydicom, the SEG and SR written to disk and
read back with pydicom and highdicom. The label map is X (columns) × Y (rows) × Z (slices, in file order),
as :func:`tasks.inference.dicom_seg.encode_dicom_seg` takes it.
"""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tasks.inference.dicom_seg import encode_dicom_seg, read_source_headers
from tasks.pacs.results import (
    ResultUids,
    build_volume_report,
    result_uids,
    seg_identity,
    source_evidence,
)

PATIENT = ("Roe^Richard", "PID-RESULTS-0815")
SPACING = (0.5, 0.5, 2.0)  # column spacing, row spacing, slice distance (mm): a voxel is 0.5 mm³
SLICES, ROWS, COLUMNS = 5, 16, 16
LABELS = {"background": 0, "liver": 1, "lesion": 2, "spleen": 3}
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
MODEL, VERSION = "liver-ct", "3"
#: The class volumes of ``label_map()`` on this grid (7 liver and 2 lesion voxels of 0.5 mm³), in ml.
VOLUMES = {"liver": 7 * 0.5 / 1000, "lesion": 2 * 0.5 / 1000, "spleen": 0.0}


def write_ct(folder: Path, *, study: str | None = None, drop: tuple[str, ...] = ()) -> list[Path]:
    """``SLICES`` int16 CT slices, 16×16, stepping 2 mm along z from (-4, -4, 10), in file order."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = study or generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    files = []
    for k in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
        ds.PatientName, ds.PatientID = PATIENT
        ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber, ds.StudyID = "19600101", "M", "ACC1", "7"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.Manufacturer = "20240305", "101500", "", "Acme"
        ds.SeriesNumber, ds.InstanceNumber = 4, k + 1
        ds.ImagePositionPatient = [-4.0, -4.0, 10.0 + SPACING[2] * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # row spacing, column spacing
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLUMNS, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = rng.integers(-1000, 1000, (ROWS, COLUMNS), dtype=np.int16).tobytes()
        for keyword in drop:
            delattr(ds, keyword)
        ds.save_as(ds.filename, enforce_file_format=True)
        files.append(Path(ds.filename))
    return files


def label_map() -> np.ndarray:
    """liver: 7 voxels over 3 slices, lesion: 2 voxels, spleen: absent; shape X × Y × Z (16 × 16 × 5)."""
    labels = np.zeros((COLUMNS, ROWS, SLICES), np.uint8)
    labels[2:5, 3, 1] = 1  # 3 voxels: columns 2-4 of row 3
    labels[2:4, 3, 2] = 1  # 2 voxels
    labels[7, 9:11, 4] = 1  # 2 voxels: rows 9-10 of column 7
    labels[12, 1, 0] = 2
    labels[13, 14, 3] = 2
    return labels


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    return write_ct(tmp_path / "source")


@pytest.fixture
def uids(series: list[Path]) -> ResultUids:
    return result_uids(read_source_headers(series)[0].SeriesInstanceUID, MODEL, VERSION)


def fields(uids: ResultUids) -> list[str]:
    return [uids.seg_series, uids.seg_instance, uids.sr_series, uids.sr_instance]


def build_seg(labels_xyz: np.ndarray, series: list[Path], label_names: dict[str, int], num_classes: int,
              version: str, uids: ResultUids) -> pydicom.Dataset:
    """The SEG the sync stores: ``unetflow infer``'s encoder, named as :func:`seg_identity` names it."""
    data = encode_dicom_seg(labels_xyz, series, label_names, num_classes, version, lambda path: path.name,
                            seg_identity(MODEL, version, uids))
    return pydicom.dcmread(io.BytesIO(data))


def make_results(series: list[Path], uids: ResultUids, version: str = VERSION) -> tuple[pydicom.Dataset, ...]:
    seg = build_seg(label_map(), series, LABELS, len(LABELS), version, uids)
    return seg, build_volume_report(seg, read_source_headers(series), VOLUMES, MODEL, version, uids)


def reread(dataset: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return pydicom.dcmread(path)


# --- identity ---------------------------------------------------------------------------------------------------


def test_result_uids_are_deterministic_valid_and_distinct_per_kind():
    source = generate_uid()
    first, again = result_uids(source, MODEL, VERSION), result_uids(source, MODEL, VERSION)
    assert first == again
    assert all(UID(uid).is_valid and len(uid) <= 64 for uid in fields(first))
    assert len(set(fields(first))) == 4


def test_result_uids_differ_across_model_versions_names_and_source_series():
    source = generate_uid()
    base = set(fields(result_uids(source, MODEL, VERSION)))
    for other in (result_uids(source, MODEL, "4"), result_uids(source, "spleen-ct", VERSION),
                  result_uids(generate_uid(), MODEL, VERSION)):
        assert base.isdisjoint(fields(other))
    # generate_uid concatenates its entropy sources: ("ab", "c") must not name what ("a", "bc") names
    assert result_uids(source, "ab", "c") != result_uids(source, "a", "bc")


# --- SEG --------------------------------------------------------------------------------------------------------


def test_seg_lies_on_the_source_series_in_its_study(series, uids, tmp_path):
    sources = read_source_headers(series)
    seg = reread(build_seg(label_map(), series, LABELS, len(LABELS), VERSION, uids), tmp_path / "seg.dcm")
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == (uids.seg_series, uids.seg_instance)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "FrameOfReferenceUID"):
        assert seg[keyword].value == sources[0][keyword].value, keyword
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        s.SOPInstanceUID for s in sources}
    assert seg.SeriesDescription == f"unetflow {MODEL} v{VERSION}" and seg.SeriesNumber == 1004
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "lesion", "spleen"]
    for segment in seg.SegmentSequence:
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (MODEL, VERSION)
    assert (seg.Rows, seg.Columns, seg.NumberOfFrames) == (ROWS, COLUMNS, SLICES * 3)
    positions = {tuple(map(float, f.PlanePositionSequence[0].ImagePositionPatient))
                 for f in seg.PerFrameFunctionalGroupsSequence}
    assert positions == {tuple(map(float, s.ImagePositionPatient)) for s in sources}


def test_seg_pixels_equal_the_label_map_slice_by_source_slice(series, uids, tmp_path):
    sources = read_source_headers(series)
    path = tmp_path / "seg.dcm"
    pydicom.dcmwrite(path, build_seg(label_map(), series, LABELS, len(LABELS), VERSION, uids))
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in sources], combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(pixels, label_map().transpose(2, 1, 0))  # slices × rows × columns


def test_infer_seg_is_unchanged_without_an_identity(series):
    """``unetflow infer`` keeps its SEG: fresh UIDs, algorithm "unetflow", the old series description."""
    first, second = (pydicom.dcmread(io.BytesIO(
        encode_dicom_seg(label_map(), series, LABELS, len(LABELS), "7", lambda p: p.name))) for _ in range(2))
    assert first.SOPInstanceUID != second.SOPInstanceUID and first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.SeriesDescription == "unetflow segmentation" and first.SeriesNumber == 1004
    algorithm = first.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("unetflow", "7")


# --- SR ---------------------------------------------------------------------------------------------------------


def test_volume_report_is_a_tid1500_sr_in_the_source_study(series, uids, tmp_path):
    sources = read_source_headers(series)
    seg, report = make_results(series, uids)
    sr = reread(report, tmp_path / "sr.dcm")
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR and sr.Modality == "SR"
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == (uids.sr_series, uids.sr_instance)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "AccessionNumber"):
        assert sr[keyword].value == sources[0][keyword].value, keyword
    assert sr.SeriesDescription == f"unetflow {MODEL} v{VERSION} volumes"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == {seg.SOPInstanceUID, *(s.SOPInstanceUID for s in sources)}


def test_volume_report_has_one_volume_per_class_referencing_its_segment(series, uids, tmp_path):
    sources = read_source_headers(series)
    seg, report = make_results(series, uids)
    reread(report, tmp_path / "sr.dcm")
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    parsed = hd.sr.MeasurementReport.from_sequence(sr.content)
    groups = parsed.get_volumetric_roi_measurement_groups(referenced_sop_instance_uid=seg.SOPInstanceUID)
    found = {}
    for group in groups:
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment.referenced_sop_class_uid == seg.SOPClassUID
        assert segment.source_series_for_segmentation.value == sources[0].SeriesInstanceUID
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        assert (volume.unit.value, volume.unit.scheme_designator) == ("ml", "UCUM")
        (number,) = segment.referenced_segment_numbers
        found[group.tracking_identifier] = (number, volume.value)
    assert found == {"liver": (1, pytest.approx(0.0035)), "lesion": (2, pytest.approx(0.001)),
                     "spleen": (3, 0.0)}
    (observer,) = parsed.get_observer_contexts(observer_type=codes.cid270.Device)
    assert MODEL in {getattr(item, "TextValue", None) for item in observer}


def test_results_need_only_the_patient_identity_an_anonymised_source_keeps(tmp_path):
    """A source without birth date, sex, accession number or study ID (type 2, often dropped) gets SEG and SR."""
    dropped = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID")
    series = write_ct(tmp_path / "bare", drop=dropped)
    sources = read_source_headers(series)
    uids = result_uids(sources[0].SeriesInstanceUID, MODEL, VERSION)
    seg = build_seg(label_map(), series, LABELS, len(LABELS), VERSION, uids)
    report = build_volume_report(seg, sources, {"liver": 0.0035}, MODEL, VERSION, uids)
    seg, sr = reread(seg, tmp_path / "seg.dcm"), reread(report, tmp_path / "sr.dcm")
    for result in (seg, sr):
        assert (result.PatientID, result.StudyInstanceUID) == (PATIENT[1], sources[0].StudyInstanceUID)
        assert all(result[keyword].value in ("", None) for keyword in dropped)
    assert not any(keyword in sources[0] for keyword in dropped)  # the caller's headers are left as they were


def test_volume_report_refuses_a_class_without_segment_and_a_seg_of_another_study(series, uids, tmp_path):
    seg, _ = make_results(series, uids)
    sources = read_source_headers(series)
    with pytest.raises(ValueError, match="no segment for"):
        build_volume_report(seg, sources, {"kidney": 1.0}, MODEL, VERSION, uids)
    other = write_ct(tmp_path / "other")
    with pytest.raises(ValueError, match="another study"):
        build_volume_report(seg, read_source_headers(other), {"liver": 1.0}, MODEL, VERSION, uids)


# --- versions ---------------------------------------------------------------------------------------------------


def test_a_new_model_version_makes_new_results_and_leaves_the_old_ones(series, uids):
    source_series = read_source_headers(series)[0].SeriesInstanceUID
    old_seg, old_sr = make_results(series, uids)
    new_uids = result_uids(source_series, MODEL, "4")
    new_seg, new_sr = make_results(series, new_uids, version="4")
    assert {new_seg.SOPInstanceUID, new_seg.SeriesInstanceUID}.isdisjoint(
        {old_seg.SOPInstanceUID, old_seg.SeriesInstanceUID})
    assert {new_sr.SOPInstanceUID, new_sr.SeriesInstanceUID}.isdisjoint(
        {old_sr.SOPInstanceUID, old_sr.SeriesInstanceUID})
    assert new_seg.StudyInstanceUID == old_seg.StudyInstanceUID == new_sr.StudyInstanceUID
    assert new_seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "4"
    again_seg, again_sr = make_results(series, uids)  # a rerun names the same results
    assert (again_seg.SOPInstanceUID, again_sr.SOPInstanceUID) == (old_seg.SOPInstanceUID, old_sr.SOPInstanceUID)


def test_a_class_name_longer_than_a_segment_label_still_finds_its_segment(series, uids):
    long_name = "hepatic segment " + "viii " * 12  # 76 characters; a SegmentLabel holds 64
    labels = {"background": 0, long_name: 1}
    seg = build_seg(np.minimum(label_map(), 1), series, labels, 2, VERSION, uids)
    report = build_volume_report(seg, read_source_headers(series), {long_name: 0.0045}, MODEL, VERSION, uids)
    (group,) = hd.sr.MeasurementReport.from_sequence(report.content).get_volumetric_roi_measurement_groups()
    assert group.referenced_segment.referenced_segment_numbers == [1]
    assert group.get_measurements(name=codes.SCT.Volume)[0].value == pytest.approx(0.0045)


def evidence_of(sr: pydicom.Dataset) -> set[tuple[str, str, str]]:
    return {(r.SeriesInstanceUID, i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
            for s in sr.CurrentRequestedProcedureEvidenceSequence for r in s.ReferencedSeriesSequence
            for i in r.ReferencedSOPSequence}


def test_evidence_from_the_seg_equals_evidence_from_every_source_header(series, uids, tmp_path):
    """The sync reads one source header and takes the rest from the SEG's references: the same SR."""
    sources = read_source_headers(series)
    seg, full = make_results(series, uids)
    light = build_volume_report(seg, source_evidence(sources[0], seg), VOLUMES, MODEL, VERSION, uids)
    full, light = reread(full, tmp_path / "full.dcm"), reread(light, tmp_path / "light.dcm")
    assert len(evidence_of(light)) == len(sources) + 1 and evidence_of(light) == evidence_of(full)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "AccessionNumber",
                    "SeriesNumber"):
        assert light[keyword].value == full[keyword].value, keyword
