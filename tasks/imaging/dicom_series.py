"""DICOM series: headers scanned once, slices checked by hand, the volume read by SimpleITK (GDCM).

SimpleITK's series reader only *warns* about a merged volume (two series or acquisitions that
share a folder) or a missing slice — and then returns a volume with a wrong z-spacing. So the
slice positions are checked here first: ImagePositionPatient projected on the slice normal must
be unique and uniformly spaced, and all slices must share size, orientation, study and frame of
reference. Only then does GDCM decode the pixels (it handles JPEG-Lossless and friends), and the
volume's geometry must match what the headers say.

The headers come from :mod:`tasks.imaging.dicom_headers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tasks.common.errors import CaseRejected
from tasks.imaging.dicom_headers import SliceHeader
from tasks.imaging.geometry import LPS_TO_RAS, affine_from_sitk, difference


@dataclass(frozen=True)
class CheckedSeries:
    """A checked series: files in slice order and the geometry the headers promise."""

    files: tuple[Path, ...]
    sop_instances: tuple[str, ...]
    affine: np.ndarray  # RAS
    shape: tuple[int, int, int]
    frame_of_reference: str


def check_series(slices: list[SliceHeader], name: Callable[[Path], str], spacing_tolerance: float,
                 max_voxels: int) -> CheckedSeries:
    """Order the slices along their normal and refuse a series SimpleITK would silently get wrong."""
    _check_single_frame_grey(slices, name)
    _check_one_series(slices, name)
    _check_positions_and_size(slices, name, max_voxels)
    normal = _slice_normal(slices[0], name)
    ordered = sorted(slices, key=lambda s: float(np.dot(s.position, normal)))
    step = _slice_step(ordered, normal, name, spacing_tolerance)
    return _checked_series(ordered, normal, step)


def _check_single_frame_grey(slices: list[SliceHeader], name: Callable[[Path], str]) -> None:
    """Single-frame greyscale files, each slice once."""
    if any(s.frames > 1 for s in slices):
        raise CaseRejected(f"{name(slices[0].path)}: multi-frame (enhanced) DICOM is not supported",
                           code="dicom_unsupported")
    if any(s.samples != 1 for s in slices):
        raise CaseRejected(f"{name(slices[0].path)}: colour DICOM (SamplesPerPixel {slices[0].samples})",
                           code="dicom_unsupported")
    seen: dict[str, Path] = {}
    for s in slices:
        if s.sop_instance in seen:
            raise CaseRejected(f"{name(s.path)}: same SOPInstanceUID as {name(seen[s.sop_instance])} "
                               f"(duplicate copy of one slice)", code="dicom_series")
        seen[s.sop_instance] = s.path


def _check_one_series(slices: list[SliceHeader], name: Callable[[Path], str]) -> None:
    """One study, frame of reference, slice size, orientation and pixel spacing: else two series are mixed."""
    for attribute, what in (("study", "studies"), ("frame_of_reference", "frames of reference")):
        values = {getattr(s, attribute) for s in slices}
        if len(values) > 1:
            raise CaseRejected(f"{name(slices[0].path)}: two series mixed in one volume "
                               f"({len(values)} {what} under one SeriesInstanceUID)", code="dicom_series")
    for attribute, what in (("rows", "Rows"), ("columns", "Columns"), ("orientation", "ImageOrientationPatient"),
                            ("pixel_spacing", "PixelSpacing")):
        values = {getattr(s, attribute) for s in slices}
        if len(values) > 1:
            odd = next(s for s in slices if getattr(s, attribute) != getattr(slices[0], attribute))
            raise CaseRejected(f"{name(odd.path)}: two series mixed in one volume ({what} "
                               f"{getattr(odd, attribute)} vs {getattr(slices[0], attribute)})", code="dicom_series")


def _check_positions_and_size(slices: list[SliceHeader], name: Callable[[Path], str], max_voxels: int) -> None:
    """Every slice placed in space; the volume within ``max_voxels``; no uncompressed file short of pixels."""
    first = slices[0]
    if first.position is None or first.orientation is None or len(first.orientation) != 6:
        missing = next(s for s in slices if s.position is None or s.orientation is None)
        raise CaseRejected(f"{name(missing.path)}: no ImagePositionPatient/ImageOrientationPatient",
                           code="dicom_series")
    if any(s.position is None for s in slices):
        missing = next(s for s in slices if s.position is None)
        raise CaseRejected(f"{name(missing.path)}: no ImagePositionPatient", code="dicom_series")
    voxels = first.rows * first.columns * len(slices)
    if first.rows <= 0 or first.columns <= 0 or voxels > max_voxels:
        raise CaseRejected(f"{name(first.path)}: header claims {first.rows}x{first.columns}x{len(slices)} voxels "
                           f"(limit {max_voxels})", code="too_large")
    needed = first.rows * first.columns * (first.bits // 8)
    for s in slices:
        if s.pixel_bytes_available is not None and s.pixel_bytes_available < needed + 8:
            raise CaseRejected(f"{name(s.path)}: truncated file ({max(s.pixel_bytes_available - 8, 0)} bytes of "
                               f"pixel data, {needed} needed)", code="truncated")


def _slice_normal(first: SliceHeader, name: Callable[[Path], str]) -> np.ndarray:
    """The unit normal of the slices (row × column direction), refused unless they are orthonormal."""
    assert first.orientation is not None
    normal = np.cross(np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:]))
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise CaseRejected(f"{name(first.path)}: ImageOrientationPatient is not two orthonormal directions",
                           code="dicom_series")
    return normal


def _slice_step(ordered: list[SliceHeader], normal: np.ndarray, name: Callable[[Path], str],
                spacing_tolerance: float) -> float:
    """The slice spacing of slices ordered along ``normal``: uniform, none missing or doubled, no shear."""
    if len(ordered) == 1:
        return ordered[0].spacing_between or 1.0
    positions = np.array([s.position for s in ordered], dtype=float)
    heights = positions @ normal
    gaps = np.diff(heights)
    step = float(np.median(gaps))
    slack = max(spacing_tolerance * max(step, 1e-6), 1e-4)
    _check_gaps(ordered, heights, step, slack, name, spacing_tolerance)
    lateral = (positions - positions[0]) - np.outer(heights - heights[0], normal)
    if np.abs(lateral).max() > slack:
        raise CaseRejected(f"{name(ordered[-1].path)}: slices are not stacked along their normal "
                           f"(shear/gantry tilt of {np.abs(lateral).max():.3g} mm)", code="dicom_series")
    return step


def _check_gaps(ordered: list[SliceHeader], heights: np.ndarray, step: float, slack: float,
                name: Callable[[Path], str], spacing_tolerance: float) -> None:
    """Refuse two slices at one position, missing slices and uneven spacing, naming the slice after the gap."""
    gaps = np.diff(heights)
    for i, gap in enumerate(gaps):
        if gap < slack:
            a, b = ordered[i], ordered[i + 1]
            if a.acquisition != b.acquisition:
                raise CaseRejected(f"{name(b.path)}: two acquisitions (AcquisitionNumber {a.acquisition} and "
                                   f"{b.acquisition}) mixed in one series: slices at the same position "
                                   f"{heights[i]:.3f} mm", code="dicom_series")
            raise CaseRejected(f"{name(b.path)}: duplicate slice position {heights[i]:.3f} mm "
                               f"(also {name(a.path)})", code="dicom_series")
    for i, gap in enumerate(gaps):
        if abs(gap - step) > slack:
            ratio = gap / step
            b = ordered[i + 1]
            if abs(ratio - round(ratio)) * step <= slack and round(ratio) >= 2:
                raise CaseRejected(f"{name(b.path)}: {round(ratio) - 1} slice(s) missing before this one "
                                   f"(gap {gap:.4g} mm, spacing {step:.4g} mm)", code="dicom_series")
            raise CaseRejected(f"{name(b.path)}: unevenly spaced slices (gap {gap:.4g} mm, "
                               f"typical {step:.4g} mm, tolerance {spacing_tolerance:.0%})", code="dicom_series")


def _checked_series(ordered: list[SliceHeader], normal: np.ndarray, step: float) -> CheckedSeries:
    """The checked series: files in slice order and the RAS affine the headers describe."""
    first = ordered[0]
    assert first.orientation is not None and first.position is not None
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    pixel = first.pixel_spacing or (1.0, 1.0)
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([row, col, normal]) @ np.diag([pixel[1], pixel[0], step])
    lps[:3, 3] = np.asarray(first.position, dtype=float)
    return CheckedSeries(tuple(s.path for s in ordered), tuple(s.sop_instance for s in ordered), LPS_TO_RAS @ lps,
                      (first.columns, first.rows, len(ordered)), first.frame_of_reference)


def read_volume(series: CheckedSeries, name: Callable[[Path], str], tolerance: float,
                convert: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The series' voxels as X×Y×Z (GDCM decodes, rescale slope/intercept applied), geometry checked.

    ``convert`` (e.g. a narrower dtype) reads ITK's own buffer: one pass instead of a copy first.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(p) for p in series.files])
    try:
        image = reader.Execute()
    except RuntimeError:
        raise CaseRejected(_culprit(series, name), code="unreadable") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseRejected(f"{name(series.files[0])}: {image.GetNumberOfComponentsPerPixel()} components per pixel",
                           code="dicom_unsupported")
    itk_affine = affine_from_sitk(image)
    if len(series.files) == 1:  # one slice: ITK's z-spacing is its own choice; keep the in-plane check
        itk_affine[:3, 2] = series.affine[:3, 2]
    diff = difference(series.affine, itk_affine, tolerance * 10)
    if diff or tuple(image.GetSize()) != series.shape:
        raise CaseRejected(f"{name(series.files[0])}: SimpleITK's volume {tuple(image.GetSize())} disagrees with "
                           f"the slice headers {series.shape} ({diff or 'size'})", code="geometry")
    # ITK's z,y,x C-order buffer *is* NIfTI's x,y,z Fortran order: the transpose is a free view, and
    # nibabel writes it without reordering a byte (a C-contiguous copy cost more than the read). The
    # view into ITK's buffer lives only as long as ``image``: what is returned must own its memory.
    view = sitk.GetArrayViewFromImage(image).T
    result = convert(view) if convert is not None else view
    return result.copy(order="K") if np.may_share_memory(result, view) else result


def _culprit(series: CheckedSeries, name: Callable[[Path], str]) -> str:
    """Which file broke the series read (only looked for once reading failed)."""
    for path in series.files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            return f"{name(path)}: unreadable or truncated DICOM pixel data"
    return f"{name(series.files[0])}: SimpleITK cannot read the series"


def read_seg(path: Path, series: CheckedSeries, name: Callable[[Path], str]) -> np.ndarray:
    """A DICOM SEG as a label map on the source series' grid (X×Y×Z, values = segment numbers)."""
    import highdicom

    try:
        seg = highdicom.seg.segread(str(path))
    except Exception as error:  # highdicom raises many types on a malformed SEG
        raise CaseRejected(f"{name(path)}: unreadable DICOM SEG ({type(error).__name__})", code="seg") from None
    if str(getattr(seg, "FrameOfReferenceUID", series.frame_of_reference)) != series.frame_of_reference:
        raise CaseRejected(f"{name(path)}: SEG frame of reference differs from its source series", code="seg")
    if (int(seg.Rows), int(seg.Columns)) != (series.shape[1], series.shape[0]):
        raise CaseRejected(f"{name(path)}: SEG frames are {seg.Rows}x{seg.Columns}, the series' "
                           f"{series.shape[1]}x{series.shape[0]}", code="seg")
    try:
        pixels = seg.get_pixels_by_source_instance(list(series.sop_instances), combine_segments=True,
                                                   assert_missing_frames_are_empty=True, dtype=np.uint16)
    except (RuntimeError, ValueError, KeyError) as error:
        raise CaseRejected(f"{name(path)}: SEG cannot be mapped onto its source series ({error})", code="seg") from None
    return np.ascontiguousarray(np.asarray(pixels).transpose(2, 1, 0))
