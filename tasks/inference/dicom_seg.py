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
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom

from tasks.common.atomic import atomic_path

SOFTWARE = "unetflow"


class SegUnavailable(Exception):
    """No SEG can be made for this series (message: ``<source file relative to the inbox>: <reason>``).

    Only the SEG is lost: the caller keeps the mask and counts the case as done.
    """


def read_source_headers(files: Sequence[Path]) -> list[pydicom.Dataset]:
    """The source slices' headers, pixels not read (highdicom only needs the header attributes)."""
    return [pydicom.dcmread(str(path), stop_before_pixels=True) for path in files]


def segment_descriptions(label_names: dict[str, int] | list[str], num_classes: int, version: str) -> list:
    """One segment per foreground class, numbered by its label value, named from the plan."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if isinstance(label_names, dict):
        names = {int(value): str(name) for name, value in label_names.items()}
    else:
        names = dict(enumerate(str(n) for n in label_names))
    algorithm = hd.AlgorithmIdentificationSequence(name=SOFTWARE, family=codes.cid7162.ArtificialIntelligence,
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
                     num_classes: int, version: str, name: Callable[[Path], str]) -> bytes:
    """``labels_xyz`` (X=columns × Y=rows × Z, Z in ``source_files`` order) as a label-map SEG file's bytes.

    Encoded in memory so that what the *sources* cannot give (SegUnavailable) is told apart from a
    failing output folder; a label map of the wrong shape is this program's error and fails the case.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    try:
        sources = read_source_headers(source_files)
        size = (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    except Exception as error:  # noqa: BLE001 — pydicom raises many types on a header it cannot re-read
        raise _refusal(error, source_files, name) from error
    if labels_xyz.shape != size:
        raise ValueError(f"label map {labels_xyz.shape} does not match the series ({'×'.join(map(str, size))})")
    frames = np.ascontiguousarray(labels_xyz.transpose(2, 1, 0)).astype(np.uint8)  # frames × rows × columns
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(label_names, num_classes, version),
            series_instance_uid=generate_uid(), series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=SOFTWARE,
            manufacturer_model_name=SOFTWARE, software_versions=version[:64] or "1", device_serial_number="0",
            series_description="unetflow segmentation", omit_empty_frames=False)
        buffer = io.BytesIO()
        seg.save_as(buffer)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 — highdicom refuses a source with ValueError, TypeError, AttributeError…
        raise _refusal(error, source_files, name) from error
    return buffer.getvalue()


def write_dicom_seg(path: Path, labels_xyz: np.ndarray, source_files: Sequence[Path],
                    label_names: dict[str, int] | list[str], num_classes: int, version: str = "1",
                    name: Callable[[Path], str] = lambda path: path.name) -> Path:
    """Write the SEG of :func:`encode_dicom_seg` atomically; raises :class:`SegUnavailable` when there is none."""
    data = encode_dicom_seg(labels_xyz, source_files, label_names, num_classes, version, name)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
