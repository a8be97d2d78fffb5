"""A predicted label map as a DICOM SEG (highdicom) that a PACS or viewer overlays on its source series.

The SEG copies the patient/study context and the FrameOfReferenceUID from the source slices and
references each of them (ReferencedSeriesSequence → the source SeriesInstanceUID), so a viewer finds
the images it belongs to. Every source slice gets a frame, empty ones too (``omit_empty_frames=False``):
several viewers mis-stack a SEG whose frames skip slices.

Not every series can have a SEG: one without FrameOfReferenceUID (older exports, series written by
ITK), a source highdicom refuses, a header pydicom cannot re-read. The mask on the series' grid is
the result and the SEG only a copy for the PACS, so :func:`encode_dicom_seg` turns such a refusal
into :class:`SegUnavailable` (the source file named relative to the inbox) and the case stays done;
writing the encoded bytes into the output folder is not covered — a full disk still fails the case.

``unetflow infer`` lets every SEG get fresh UIDs and names the algorithm "unetflow"; a caller that
stores the SEG back into a PACS (:mod:`tasks.pacs.results`) passes a :class:`SegIdentity` instead, so
the SEG names the model and its version and carries UIDs the caller can look up before storing twice.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from tasks.common.atomic import atomic_path

SOFTWARE = "unetflow"


@dataclass(frozen=True)
class SegIdentity:
    """Who made the SEG and which UIDs it carries; the defaults are what ``unetflow infer`` writes.

    ``algorithm`` is the AlgorithmName of every segment (and the ManufacturerModelName); ``None`` UIDs
    are generated afresh; ``series_number`` ``None`` is the source series' number + 1000.
    """

    algorithm: str = SOFTWARE
    series_uid: str | None = None
    instance_uid: str | None = None
    series_number: int | None = None
    series_description: str = "unetflow segmentation"


class SegUnavailable(Exception):
    """No SEG can be made for this series (message: ``<source file relative to the inbox>: <reason>``).

    Only the SEG is lost: the caller keeps the mask and counts the case as done.
    """


#: Type 2 patient/study attributes highdicom copies into a SEG or SR, but that anonymised exports often drop.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                       "StudyDate", "StudyTime", "ReferringPhysicianName")


def read_source_headers(files: Sequence[Path]) -> list[pydicom.Dataset]:
    """The source slices' headers, pixels not read (highdicom only needs the header attributes)."""
    return [pydicom.dcmread(str(path), stop_before_pixels=True) for path in files]


def with_type2_defaults(header: pydicom.Dataset) -> pydicom.Dataset:
    """``header`` with the missing :data:`TYPE2_PATIENT_STUDY` attributes present and empty, as DICOM allows.

    Type 2 means "present, may be empty": a source that leaves them out is still a valid base for a SEG.
    """
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def segment_descriptions(label_names: dict[str, int] | list[str], num_classes: int, version: str,
                         algorithm: str = SOFTWARE) -> list:
    """One segment per foreground class, numbered by its label value, named from the plan, made by ``algorithm``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if isinstance(label_names, dict):
        names = {int(value): str(name) for name, value in label_names.items()}
    else:
        names = dict(enumerate(str(n) for n in label_names))
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm[:64] or SOFTWARE,
                                                   family=codes.cid7162.ArtificialIntelligence,
                                                   version=version[:64] or "1")
    return [hd.seg.SegmentDescription(
        segment_number=value, segment_label=names.get(value, f"class {value}")[:64],
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for value in range(1, num_classes)]


def _refusal(error: Exception, files: Sequence[Path], name: Callable[[Path], str]) -> SegUnavailable:
    """The reason on one line, absolute source paths replaced by their names (a folder may name the patient)."""
    reason = " ".join(str(error).split()) or type(error).__name__
    for path in sorted({*files, *(f.parent for f in files)}, key=lambda p: -len(str(p))):
        reason = reason.replace(str(path), name(path))
    return SegUnavailable(f"{name(files[0])}: {reason} ({type(error).__name__})")


def encode_dicom_seg(labels_xyz: np.ndarray, source_files: Sequence[Path], label_names: dict[str, int] | list[str],
                     num_classes: int, version: str, name: Callable[[Path], str],
                     identity: SegIdentity | None = None) -> bytes:
    """``labels_xyz`` (X=columns × Y=rows × Z, Z in ``source_files`` order) as a label-map SEG file's bytes.

    Encoded in memory so that what the *sources* cannot give (SegUnavailable) is told apart from a
    failing output folder; a label map of the wrong shape is this program's error and fails the case.
    """
    try:
        sources = [with_type2_defaults(header) for header in read_source_headers(source_files)]
        size = (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    except Exception as error:  # noqa: BLE001 — pydicom raises many types on a header it cannot re-read
        raise _refusal(error, source_files, name) from error
    if labels_xyz.shape != size:
        raise ValueError(f"label map {labels_xyz.shape} does not match the series ({'×'.join(map(str, size))})")
    frames = np.ascontiguousarray(labels_xyz.transpose(2, 1, 0)).astype(np.uint8)  # frames × rows × columns
    identity = identity or SegIdentity()
    try:
        segments = segment_descriptions(label_names, num_classes, version, identity.algorithm)
        seg = _segmentation(frames, sources, segments, version, identity)
        buffer = io.BytesIO()
        seg.save_as(buffer)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 — highdicom refuses a source with ValueError, TypeError, AttributeError…
        raise _refusal(error, source_files, name) from error
    return buffer.getvalue()


def _segmentation(frames: np.ndarray, sources: list[pydicom.Dataset], segments: list, version: str,
                  identity: SegIdentity):
    """The highdicom SEG: one frame per source slice (empty ones too), UIDs and names from ``identity``."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    series_number = identity.series_number
    if series_number is None:
        series_number = int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=identity.series_uid or generate_uid(),
        series_number=series_number, sop_instance_uid=identity.instance_uid or generate_uid(), instance_number=1,
        manufacturer=SOFTWARE, manufacturer_model_name=identity.algorithm[:64] or SOFTWARE,
        software_versions=version[:64] or "1", device_serial_number="0",
        series_description=identity.series_description[:64], omit_empty_frames=False)


def write_dicom_seg(path: Path, labels_xyz: np.ndarray, source_files: Sequence[Path],
                    label_names: dict[str, int] | list[str], num_classes: int, version: str = "1",
                    name: Callable[[Path], str] = lambda path: path.name, identity: SegIdentity | None = None) -> Path:
    """Write the SEG of :func:`encode_dicom_seg` atomically; raises :class:`SegUnavailable` when there is none."""
    data = encode_dicom_seg(labels_xyz, source_files, label_names, num_classes, version, name, identity)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
