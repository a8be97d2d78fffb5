"""DICOM trees on real files (pydicom, SimpleITK, highdicom): series by UID, geometry, exact voxels, privacy."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEGLosslessSV1

from tasks.common.names import pseudonym
from tasks.config import DataConfig
from tasks.imaging.geometry import affine_from_sitk
from tasks.ingest.batch import ingest_dataset
from tests.ingest.makers import LABELS, PATIENT, save_nifti, sitk_series, write_seg, write_series


def gdcm_volume(folder: Path, uid: str) -> sitk.Image:
    """What SimpleITK alone makes of a series: the reference for geometry and voxel values."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def as_ras(image: sitk.Image) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.Nifti1Image(sitk.GetArrayFromImage(image).transpose(2, 1, 0),
                                                    affine_from_sitk(image)))


def make_tree(raw: Path) -> dict:
    rng = np.random.default_rng(0)
    folder = raw / "Doe_Jane" / "2024" / "CT"  # nested, patient-named folder, two series inside
    volume = rng.integers(0, 3000, (8, 16, 12)).astype(np.uint16)
    tilted = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # a sagittal series: directions not axis-aligned with RAS
    first = write_series(folder, volume, prefix="A")
    second = write_series(folder, volume[:6, :, :10], prefix="B", orientation=tilted, spacing=(0.5, 0.6, 1.5))
    mask = np.zeros(volume.shape, bool)
    mask[2:5, 4:9, 3:7] = True
    write_seg(raw / "seg" / "first", first, mask)
    sitk_series(raw / "mr" / "run1", rng.integers(-500, 500, (5, 10, 9)))
    return {"first": first, "second": second, "folder": folder, "mask": mask}


def test_multi_series_tree_ingests_with_seg_and_nifti_labels(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    tree = make_tree(raw)
    data = DataConfig(instance_labels=False, label_names=LABELS)
    manifest, results = ingest_dataset(raw, out, data)
    # The SEG-labelled series lands; the two others are named as unlabelled, with the expected label path.
    assert manifest["num_cases"] == 1 and manifest["source"] == "dicom" and manifest["modality"] == "CT"
    missing = [r for r in results if not r.accepted]
    assert len(missing) == 2 and all("no label" in r.reason and "labels/dcm-" in r.reason for r in missing)
    # Give them NIfTI labels on their own grid (as a user would, from the reported pseudonymous IDs).
    for folder, series in ((tree["folder"], tree["second"][0].SeriesInstanceUID), (raw / "mr" / "run1", None)):
        uid = series or sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))[0]
        reference = as_ras(gdcm_volume(folder, uid))
        study = sitk.ReadImage(gdcm_volume_files(folder, uid)[0]).GetMetaData("0020|000d").strip("\0 ")
        case = pseudonym(data.dicom_id_salt, study, uid)
        assert case in {r.case_id for r in missing}
        label = (np.asarray(reference.dataobj) > np.median(reference.dataobj)).astype(np.uint8)
        save_nifti(label, raw / "labels" / f"{case}.nii.gz", reference.affine)
    manifest, results = ingest_dataset(raw, out, data)
    assert [r.reason for r in results if not r.accepted] == [] and manifest["num_cases"] == 3
    for case in manifest["cases"]:
        written = nib.load(str(out / case["files"]["image"]))
        assert nib.aff2axcodes(written.affine) == ("R", "A", "S")
        assert np.allclose(affine_from_sitk(sitk.ReadImage(str(out / case["files"]["image"]))), written.affine,
                           atol=1e-4)
    # DICOM → NIfTI keeps voxel values exactly, and geometry matches SimpleITK's own reading within 1e-4.
    for folder, uid in ((tree["folder"], tree["first"][0].SeriesInstanceUID),
                        (tree["folder"], tree["second"][0].SeriesInstanceUID)):
        reference = as_ras(gdcm_volume(folder, uid))
        case = next(c for c in manifest["cases"] if c["shape"] == list(reference.shape))
        written = nib.load(str(out / case["files"]["image"]))
        assert np.allclose(written.affine, reference.affine, atol=1e-4)
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(reference.dataobj))
    seg_case = next(c for c in manifest["cases"] if c["source"]["label"] == "seg")
    label = np.asarray(nib.load(str(out / seg_case["files"]["label"])).dataobj)
    assert label.sum() == tree["mask"].sum() and seg_case["spacing"] == [0.7, 0.8, 2.5]
    # GDCM hands back int32 (uint16 stored + intercept −1024); the values fit int16, which is what is written.
    assert seg_case["dtype"] == "int16" and nib.load(str(out / seg_case["files"]["image"])).get_data_dtype() == "<i2"
    stored = tree["first"][3].pixel_array.astype(np.int32) - 1024  # stored value × slope + intercept
    written = np.asarray(nib.load(str(out / seg_case["files"]["image"])).dataobj)
    assert np.array_equal(written[:, :, 3], stored.T[::-1, ::-1])  # rows/columns run L and P: RAS flips both
    # Privacy: no case ID, file name or manifest value carries the patient's name or ID.
    text = (out / "dataset.json").read_text() + (out / "rejected.json").read_text() + (out / "sources.json").read_text()
    names = " ".join(p.name for p in out.rglob("*"))
    for secret in ("Doe", "Jane", PATIENT[1], "Roe", "PID777"):
        assert secret not in text and secret not in names


def gdcm_volume_files(folder: Path, uid: str) -> list[str]:
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))


def test_jpeg_lossless_and_headers_longer_than_the_read_window_ingest_exactly(tmp_path):
    """GDCM decodes JPEG Lossless that pydicom alone cannot; a 100 KB private tag pushes PixelData past
    the 64 KiB that header scanning reads first, so the file itself must be parsed."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    rng = np.random.default_rng(1)
    volume = rng.integers(-1000, 2000, (6, 20, 18))
    sitk_series(raw / "jpeg", volume, jpeg_lossless=True)
    first = pydicom.dcmread(sorted((raw / "jpeg").iterdir())[0])
    assert first.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    with pytest.raises(Exception):  # noqa: B017 — no pydicom pixel handler for it here
        first.pixel_array  # noqa: B018
    for ds in write_series(raw / "long", rng.integers(0, 3000, (5, 12, 10)).astype(np.uint16)):
        ds.private_block(0x0029, "Acme private", create=True).add_new(0x10, "OB", bytes(100_000))
        ds.save_as(ds.filename, enforce_file_format=True)
    assert all(p.stat().st_size > 100_000 for p in (raw / "long").iterdir())
    references = {}
    for case in ("jpeg", "long"):
        uid = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(raw / case))[0]
        references[case] = as_ras(gdcm_volume(raw / case, uid))
        label = (np.asarray(references[case].dataobj) > 500).astype(np.uint8)
        save_nifti(label, raw / "labels" / f"{case}.nii.gz", references[case].affine)
    manifest, results = ingest_dataset(raw, out, DataConfig(instance_labels=False, label_names=LABELS,
                                                           dicom_case_id="folder"))
    assert [r.reason for r in results if not r.accepted] == [] and manifest["num_cases"] == 2
    for case in manifest["cases"]:
        written, reference = nib.load(str(out / case["files"]["image"])), references[case["case_id"]]
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(reference.dataobj))
        assert np.allclose(written.affine, reference.affine, atol=1e-4)
    decoded = sitk.GetArrayFromImage(gdcm_volume(raw / "jpeg", first.SeriesInstanceUID))
    assert np.array_equal(decoded, volume)  # lossless: the slices hold exactly what was written
