"""A predicted label map as a DICOM SEG (highdicom) that a PACS or viewer overlays on its source series.

The SEG copies the patient/study context and the FrameOfReferenceUID from the source slices and
references each of them (ReferencedSeriesSequence → the source SeriesInstanceUID), so a viewer finds
the images it belongs to. Every source slice gets a frame, empty ones too (``omit_empty_frames=False``):
several viewers mis-stack a SEG whose frames skip slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from tasks.common.atomic import atomic_path

SOFTWARE = "unetflow"


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


def write_dicom_seg(path: Path, labels_xyz: np.ndarray, source_files: Sequence[Path],
                    label_names: dict[str, int] | list[str], num_classes: int, version: str = "1") -> Path:
    """Write ``labels_xyz`` (X=columns × Y=rows × Z, Z in ``source_files`` order) as a label-map SEG."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    sources = read_source_headers(source_files)
    if labels_xyz.shape != (int(sources[0].Columns), int(sources[0].Rows), len(sources)):
        raise ValueError(f"label map {labels_xyz.shape} does not match the series "
                         f"({sources[0].Columns}×{sources[0].Rows}×{len(sources)})")
    frames = np.ascontiguousarray(labels_xyz.transpose(2, 1, 0)).astype(np.uint8)  # frames × rows × columns
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(label_names, num_classes, version),
        series_instance_uid=generate_uid(), series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=SOFTWARE,
        manufacturer_model_name=SOFTWARE, software_versions=version[:64] or "1", device_serial_number="0",
        series_description="unetflow segmentation", omit_empty_frames=False)
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path
