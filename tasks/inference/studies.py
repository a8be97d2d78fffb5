"""Reading a study for inference and writing its mask back on the study's own voxel grid.

The model saw canonical (closest-RAS) voxels in training — ingest reorders axes without resampling —
so a study is reordered the same way, segmented, and the mask is reordered back: the NIfTI output
has the input's exact shape, affine, qform/sform (codes included), and for a DICOM series the grid
the slice headers describe (checked against SimpleITK's reading by :mod:`tasks.imaging.dicom_series`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from tasks.common.atomic import atomic_path
from tasks.common.errors import CaseRejected
from tasks.common.names import printable
from tasks.imaging.dicom_series import CheckedSeries, check_series, read_volume
from tasks.imaging.geometry import check_same_grid
from tasks.imaging.nifti_reader import read_nifti
from tasks.inference.inputs import InferCase


@dataclass
class LoadedStudy:
    """Voxels ``X×Y×Z[×C]`` in the input's own order, its RAS affine, and what writing the mask needs."""

    data: np.ndarray
    affine: np.ndarray
    out_shape: tuple[int, ...]  # the mask's shape: the input's spatial shape (2D files stay 2D)
    header: nib.Nifti1Header | None = None  # NIfTI input: its header (qform/sform codes are kept)
    series: CheckedSeries | None = None  # DICOM input: the checked series, files in slice order


def load_study(case: InferCase, name: Callable[[Path], str], tolerance: float = 1e-4,
               spacing_tolerance: float = 0.01, max_voxels: int = 1_000_000_000) -> LoadedStudy:
    """Read one case; raises :class:`CaseRejected` with the offending file's name when it cannot be segmented.

    NIfTI files go through the reader ingest uses (:func:`~tasks.imaging.nifti_reader.read_nifti`): the
    header is checked against ``max_voxels`` and the file's length before any voxel is read.
    """
    if case.kind == "dicom":
        series = check_series(list(case.slices), name, spacing_tolerance, max_voxels)
        data = read_volume(series, name, tolerance)
        return LoadedStudy(data, series.affine, series.shape, series=series)
    channels: list[np.ndarray] = []
    first: nib.Nifti1Image | None = None
    for index, path in enumerate(case.files):
        volume = read_nifti(path, name(path), max_voxels=max_voxels, vector_channels=True)
        if first is None:
            first = volume.image
        else:
            if volume.data.ndim != 3:
                raise CaseRejected(f"{name(path)}: channel files must be 3D, got {volume.data.shape}", code="channels")
            check_same_grid(channels[0].shape, first.affine, volume.data.shape, volume.affine, tolerance,
                            f"channel {index}", name(path))
        channels.append(volume.data)
    assert first is not None
    stacked = channels[0] if len(channels) == 1 else np.stack(channels, axis=3)
    out_shape = tuple(first.shape[:3]) if len(first.shape) >= 3 else tuple(first.shape)
    return LoadedStudy(stacked, first.affine, out_shape, header=first.header)


def to_model_space(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The closest-RAS reordering ingest applied to training images (no resampling)."""
    return apply_orientation(data, io_orientation(affine))


def to_input_space(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo :func:`to_model_space` so the mask lies on the input's own voxel grid."""
    return apply_orientation(labels, ornt_transform(axcodes2ornt("RAS"), io_orientation(affine)))


def write_mask(path: Path, labels: np.ndarray, study: LoadedStudy, dtype: type[np.integer] = np.uint8) -> Path:
    """The mask as NIfTI on the input grid: same shape, affine and qform/sform as the input.

    ``dtype``: uint8 for class labels; an instance map's ids need uint16 or int32.
    """
    labels = np.ascontiguousarray(labels.reshape(study.out_shape).astype(dtype))
    if study.header is not None:
        header = study.header.copy()
        header.set_data_dtype(dtype)
        header.set_slope_inter(1, 0)
        header.set_intent("label")
        image = nib.Nifti1Image(labels, study.affine, header)
        qform, qcode = study.header.get_qform(coded=True)
        sform, scode = study.header.get_sform(coded=True)
        if qform is not None:
            image.header.set_qform(qform, int(qcode))
        if sform is not None:
            image.header.set_sform(sform, int(scode))
        if qform is None and sform is None:
            image.header.set_qform(study.affine, 0)
            image.header.set_sform(study.affine, 0)
    else:  # DICOM: the scanner frame the slice headers define
        image = nib.Nifti1Image(labels, study.affine)
        image.header.set_qform(study.affine, 1)
        image.header.set_sform(study.affine, 1)
        image.header.set_intent("label")
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def shown_name(root: Path) -> Callable[[Path], str]:
    """Names in messages: relative to the inbox, control characters escaped."""
    def name(path: Path) -> str:
        try:
            return printable(path.relative_to(root).as_posix())
        except ValueError:
            return printable(path.name)
    return name
