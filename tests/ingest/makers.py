"""Real input files for ingest tests: NIfTI by nibabel, DICOM slices by pydicom (and SimpleITK), SEG by highdicom."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LABELS = {"background": 0, "organ": 1}
PATIENT = ("Doe^Jane", "PID12345")


def write_dataset_json(raw: Path, labels: dict | None = None, channels: tuple[str, ...] = ("CT",),
                       **extra: object) -> Path:
    """An nnU-Net v2 ``dataset.json`` (``labels`` default: ``LABELS``); ``extra`` adds or replaces keys."""
    meta = {"labels": LABELS if labels is None else labels,
            "channel_names": {str(c): name for c, name in enumerate(channels)}, "file_ending": ".nii.gz", **extra}
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "dataset.json").write_text(json.dumps(meta, indent=2))
    return raw / "dataset.json"


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def write_series(folder: Path, volume: np.ndarray, *, spacing: tuple[float, float, float] = (0.7, 0.8, 2.5),
                 origin: tuple[float, float, float] = (-10.0, -20.0, 30.0),
                 orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0), study: str | None = None,
                 series: str | None = None, frame: str | None = None, patient: tuple[str, str] = PATIENT,
                 acquisition: int = 1, intercept: float = -1024.0, prefix: str = "IM",
                 heights: list[float] | None = None, modality: str = "CT") -> list[pydicom.Dataset]:
    """One CT series, one file per slice, no file extension. ``volume`` is Z×Y×X stored values (uint16).

    ``spacing`` is (x, y, z) as ITK orders it; ``heights`` overrides slice positions along the normal.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = study or generate_uid(), series or generate_uid(), frame or generate_uid()
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    heights = heights if heights is not None else [k * spacing[2] for k in range(volume.shape[0])]
    datasets = []
    for k, height in enumerate(heights):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{prefix}{k:04d}"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Manufacturer = modality, "Acme"
        ds.PatientName, ds.PatientID = patient
        ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, k + 1
        ds.AcquisitionNumber = acquisition
        position = np.asarray(origin) + height * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:g}", "1"
        ds.PixelData = np.ascontiguousarray(volume[min(k, volume.shape[0] - 1)].astype(np.uint16)).tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        ds.filename = str(path)
        datasets.append(ds)
    return datasets


def write_seg(path: Path, sources: list[pydicom.Dataset], mask: np.ndarray) -> Path:
    """A binary DICOM SEG (one segment) over ``sources``; ``mask`` is Z×Y×X in the sources' order."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="organ", segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(bool), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=2,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="Acme", manufacturer_model_name="m",
        software_versions="1", device_serial_number="1")
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(path))
    return path


def sitk_series(folder: Path, volume: np.ndarray, spacing=(0.6, 0.9, 3.0), origin=(5.0, -7.0, 12.0),
                jpeg_lossless: bool = False) -> None:
    """A series written by SimpleITK's ImageFileWriter, slice by slice (its DicomSeriesFromArray example).

    ``jpeg_lossless``: GDCM compresses each slice as JPEG Lossless, Process 14 SV1 (1.2.840.10008.1.2.4.70),
    which pydicom cannot decode without extra plugins.
    """
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(volume.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    if jpeg_lossless:
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    direction = image.GetDirection()
    common = [("0008|0060", "MR"), ("0020|000e", series), ("0020|000d", study), ("0020|0052", frame),
              ("0010|0010", "Roe^Richard"), ("0010|0020", "PID777"), ("0008|0070", "Acme"),
              ("0020|0037", "\\".join(map(str, (*direction[0:7:3], *direction[1:8:3])))),
              ("0028|0030", f"{spacing[1]}\\{spacing[0]}"), ("0018|0050", str(spacing[2]))]
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        for tag, value in common:
            piece.SetMetaData(tag, value)
        piece.SetMetaData("0008|0018", generate_uid())
        piece.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        piece.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"slice{k:03d}"))
        writer.Execute(piece)
