"""DICOM series: headers scanned once, slices checked by hand, the volume read by SimpleITK (GDCM).

SimpleITK's series reader only *warns* about a merged volume (two series or acquisitions that
share a folder) or a missing slice — and then returns a volume with a wrong z-spacing. So the
slice positions are checked here first: ImagePositionPatient projected on the slice normal must
be unique and uniformly spaced, and all slices must share size, orientation, study and frame of
reference. Only then does GDCM decode the pixels (it handles JPEG-Lossless and friends), and the
volume's geometry must match what the headers say.

Header values that identify the patient (PatientName, PatientID) are read only to know which
folder names to hide; they are never returned.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from tasks.common.errors import CaseRejected
from tasks.common.names import identity_tokens
from tasks.imaging.geometry import LPS_TO_RAS, affine_from_sitk, difference

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_TAG = {keyword: tag_for_keyword(keyword) for keyword in (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "AcquisitionNumber", "NumberOfFrames",
    "SpacingBetweenSlices", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated")}
_HEAD_BYTES = 1 << 16
_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010), little / big endian
#: The only header values that may reach the manifest or a log.
ALLOWED_TAGS = ("Modality", "Manufacturer", "ManufacturerModelName", "SliceThickness")


@dataclass(frozen=True)
class SliceHeader:
    """What ingest needs from one DICOM file — nothing that identifies the patient."""

    path: Path
    sop_class: str
    sop_instance: str
    study: str
    series: str
    frame_of_reference: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    rows: int
    columns: int
    acquisition: int | None
    frames: int
    samples: int
    bits: int
    pixel_bytes_available: int | None  # bytes after the PixelData tag; None when compressed
    allowed: tuple[tuple[str, str], ...] = ()
    referenced_series: tuple[str, ...] = ()
    spacing_between: float | None = None

    @property
    def is_seg(self) -> bool:
        return self.sop_class == SEG_SOP_CLASS


@dataclass
class Scan:
    headers: list[SliceHeader] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    tokens: dict[str, set[str]] = field(default_factory=dict)  # series UID → patient name/ID fragments


def looks_like_dicom(path: Path) -> bool:
    """Part-10 files carry ``DICM`` at byte 128, whatever their name (often no extension)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _parse_header(path: Path) -> tuple[pydicom.Dataset, int, int]:
    """(dataset without pixels, offset of the PixelData element, file size).

    The header is parsed from the file's first 64 KiB in memory: pydicom reads element by element,
    and from a file that is a few small reads per element — most of a header scan's time. When
    the header does not end (at PixelData) inside that window, the file itself is parsed.
    """
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
        size = os.fstat(handle.fileno()).st_size
        whole = len(head) >= size
        buffer = io.BytesIO(head)
        try:
            ds = pydicom.dcmread(buffer, stop_before_pixels=True)
            offset = buffer.tell()
            if whole or head[offset:offset + 4] in _PIXEL_DATA_TAGS:
                return ds, offset, size
        except Exception:  # noqa: BLE001 — cut mid-element by the window: parse the file itself
            if whole:
                raise
        handle.seek(0)
        ds = pydicom.dcmread(handle, stop_before_pixels=True)
        return ds, handle.tell(), size


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    """A UI/CS/DS/IS element as its text, straight from the raw bytes.

    These VRs are ASCII by the standard, so neither character-set decoding nor pydicom's value
    conversion (most of a header scan's time) is needed; the few values used are parsed here.
    """
    element = ds.get_item(_TAG[keyword])
    value = None if element is None else element.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if isinstance(value, str):
        return value
    return "\\".join(str(v) for v in value) if isinstance(value, list | tuple | MultiValue) else str(value)


def _floats(text: str) -> tuple[float, ...] | None:
    try:
        return tuple(float(v) for v in text.split("\\")) if text else None
    except ValueError:
        return None


def _number(text: str, kind: type[int] | type[float]) -> int | float | None:
    try:
        return kind(text) if text else None
    except ValueError:
        return None


def _unsigned(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    """A US element (Rows, Columns, …); raw bytes in the file's byte order."""
    element = ds.get_item(_TAG[keyword])
    if element is None or element.value in (None, b""):
        return default
    if isinstance(element.value, bytes):
        order = "little" if getattr(element, "is_little_endian", True) else "big"
        return int.from_bytes(element.value[:2], order) if len(element.value) >= 2 else default
    value = ds[keyword].value  # already converted (or an unusual VR): let pydicom say what it holds
    return int(value[0] if isinstance(value, list | MultiValue) else value)


def read_header(path: Path) -> tuple[SliceHeader, set[str]]:
    """One file's header (pixels not read) and the patient-identity fragments to hide."""
    ds, offset, size = _parse_header(path)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    # Compressed or deflated pixel data has no size to check against Rows × Columns: GDCM judges it.
    compressed = bool(syntax is not None and (syntax.is_compressed or syntax.is_deflated))
    referenced = tuple(str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])
                       if "SeriesInstanceUID" in item)
    allowed = tuple((tag, str(value)) for tag in ALLOWED_TAGS if (value := ds.get(tag)) not in (None, ""))
    header = SliceHeader(
        path=path, sop_class=_text(ds, "SOPClassUID"), sop_instance=_text(ds, "SOPInstanceUID"),
        study=_text(ds, "StudyInstanceUID"), series=_text(ds, "SeriesInstanceUID"),
        frame_of_reference=_text(ds, "FrameOfReferenceUID"),
        position=_floats(_text(ds, "ImagePositionPatient")), orientation=_floats(_text(ds, "ImageOrientationPatient")),
        pixel_spacing=_floats(_text(ds, "PixelSpacing")), rows=_unsigned(ds, "Rows", 0),
        columns=_unsigned(ds, "Columns", 0), acquisition=_number(_text(ds, "AcquisitionNumber"), int),
        frames=_number(_text(ds, "NumberOfFrames"), int) or 1, samples=_unsigned(ds, "SamplesPerPixel", 1) or 1,
        bits=_unsigned(ds, "BitsAllocated", 16) or 16, pixel_bytes_available=None if compressed else size - offset,
        allowed=allowed, referenced_series=referenced,
        spacing_between=_number(_text(ds, "SpacingBetweenSlices"), float))
    return header, identity_tokens(str(ds.get("PatientName", "")), str(ds.get("PatientID", "")))


def scan(root: Path, skip: Callable[[Path], bool] = lambda path: False) -> Scan:
    """Every DICOM file under ``root`` (nested folders, any name), read header-only."""
    result = Scan()
    # pydicom warns with the full path, and DICOM folders are often named after the patient.
    with warnings.catch_warnings(), _quiet(logging.getLogger("pydicom")):
        warnings.simplefilter("ignore")
        _scan_into(root, skip, result)
    return result


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _scan_into(root: Path, skip: Callable[[Path], bool], result: Scan) -> None:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if name.startswith(".") or skip(path) or not looks_like_dicom(path):
                continue
            try:
                header, tokens = read_header(path)
            except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as error:
                result.unreadable.append((path, f"unreadable DICOM header ({type(error).__name__})"))
                continue
            if not header.series:
                result.unreadable.append((path, "unreadable DICOM header (no SeriesInstanceUID)"))
                continue
            result.headers.append(header)
            result.tokens.setdefault(header.series, set()).update(tokens)


@dataclass(frozen=True)
class SeriesPlan:
    """A checked series: files in slice order and the geometry the headers promise."""

    files: tuple[Path, ...]
    sop_instances: tuple[str, ...]
    affine: np.ndarray  # RAS
    shape: tuple[int, int, int]
    frame_of_reference: str


def check_series(slices: list[SliceHeader], name: Callable[[Path], str], spacing_tolerance: float,
                 max_voxels: int) -> SeriesPlan:
    """Order the slices along their normal and refuse a series SimpleITK would silently get wrong."""
    if any(s.frames > 1 for s in slices):
        raise CaseRejected(f"{name(slices[0].path)}: multi-frame (enhanced) DICOM is not supported")
    if any(s.samples != 1 for s in slices):
        raise CaseRejected(f"{name(slices[0].path)}: colour DICOM (SamplesPerPixel {slices[0].samples})")
    seen: dict[str, Path] = {}
    for s in slices:
        if s.sop_instance in seen:
            raise CaseRejected(f"{name(s.path)}: same SOPInstanceUID as {name(seen[s.sop_instance])} "
                               f"(duplicate copy of one slice)")
        seen[s.sop_instance] = s.path
    for attribute, what in (("study", "studies"), ("frame_of_reference", "frames of reference")):
        values = {getattr(s, attribute) for s in slices}
        if len(values) > 1:
            raise CaseRejected(f"{name(slices[0].path)}: two series mixed in one volume "
                               f"({len(values)} {what} under one SeriesInstanceUID)")
    for attribute, what in (("rows", "Rows"), ("columns", "Columns"), ("orientation", "ImageOrientationPatient"),
                            ("pixel_spacing", "PixelSpacing")):
        values = {getattr(s, attribute) for s in slices}
        if len(values) > 1:
            odd = next(s for s in slices if getattr(s, attribute) != getattr(slices[0], attribute))
            raise CaseRejected(f"{name(odd.path)}: two series mixed in one volume ({what} "
                               f"{getattr(odd, attribute)} vs {getattr(slices[0], attribute)})")
    first = slices[0]
    if first.position is None or first.orientation is None or len(first.orientation) != 6:
        missing = next(s for s in slices if s.position is None or s.orientation is None)
        raise CaseRejected(f"{name(missing.path)}: no ImagePositionPatient/ImageOrientationPatient")
    if any(s.position is None for s in slices):
        missing = next(s for s in slices if s.position is None)
        raise CaseRejected(f"{name(missing.path)}: no ImagePositionPatient")
    voxels = first.rows * first.columns * len(slices)
    if first.rows <= 0 or first.columns <= 0 or voxels > max_voxels:
        raise CaseRejected(f"{name(first.path)}: header claims {first.rows}x{first.columns}x{len(slices)} voxels "
                           f"(limit {max_voxels})")
    needed = first.rows * first.columns * (first.bits // 8)
    for s in slices:
        if s.pixel_bytes_available is not None and s.pixel_bytes_available < needed + 8:
            raise CaseRejected(f"{name(s.path)}: truncated file ({max(s.pixel_bytes_available - 8, 0)} bytes of "
                               f"pixel data, {needed} needed)")
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise CaseRejected(f"{name(first.path)}: ImageOrientationPatient is not two orthonormal directions")
    ordered = sorted(slices, key=lambda s: float(np.dot(s.position, normal)))
    positions = np.array([s.position for s in ordered], dtype=float)
    heights = positions @ normal
    pixel = first.pixel_spacing or (1.0, 1.0)
    if len(ordered) > 1:
        gaps = np.diff(heights)
        step = float(np.median(gaps))
        slack = max(spacing_tolerance * max(step, 1e-6), 1e-4)
        for i, gap in enumerate(gaps):
            if gap < slack:
                a, b = ordered[i], ordered[i + 1]
                if a.acquisition != b.acquisition:
                    raise CaseRejected(f"{name(b.path)}: two acquisitions (AcquisitionNumber {a.acquisition} and "
                                       f"{b.acquisition}) mixed in one series: slices at the same position "
                                       f"{heights[i]:.3f} mm")
                raise CaseRejected(f"{name(b.path)}: duplicate slice position {heights[i]:.3f} mm "
                                   f"(also {name(a.path)})")
        for i, gap in enumerate(gaps):
            if abs(gap - step) > slack:
                ratio = gap / step
                b = ordered[i + 1]
                if abs(ratio - round(ratio)) * step <= slack and round(ratio) >= 2:
                    raise CaseRejected(f"{name(b.path)}: {round(ratio) - 1} slice(s) missing before this one "
                                       f"(gap {gap:.4g} mm, spacing {step:.4g} mm)")
                raise CaseRejected(f"{name(b.path)}: unevenly spaced slices (gap {gap:.4g} mm, "
                                   f"typical {step:.4g} mm, tolerance {spacing_tolerance:.0%})")
        lateral = (positions - positions[0]) - np.outer(heights - heights[0], normal)
        if np.abs(lateral).max() > slack:
            raise CaseRejected(f"{name(ordered[-1].path)}: slices are not stacked along their normal "
                               f"(shear/gantry tilt of {np.abs(lateral).max():.3g} mm)")
    else:
        step = first.spacing_between or 1.0
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([row, col, normal]) @ np.diag([pixel[1], pixel[0], step])
    lps[:3, 3] = positions[0]
    return SeriesPlan(tuple(s.path for s in ordered), tuple(s.sop_instance for s in ordered), LPS_TO_RAS @ lps,
                      (first.columns, first.rows, len(ordered)), first.frame_of_reference)


def read_volume(plan: SeriesPlan, name: Callable[[Path], str], tolerance: float,
                convert: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The series' voxels as X×Y×Z (GDCM decodes, rescale slope/intercept applied), geometry checked.

    ``convert`` (e.g. a narrower dtype) reads ITK's own buffer: one pass instead of a copy first.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(p) for p in plan.files])
    try:
        image = reader.Execute()
    except RuntimeError:
        raise CaseRejected(_culprit(plan, name)) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseRejected(f"{name(plan.files[0])}: {image.GetNumberOfComponentsPerPixel()} components per pixel")
    itk_affine = affine_from_sitk(image)
    if len(plan.files) == 1:  # one slice: ITK's z-spacing is its own choice; keep the in-plane check
        itk_affine[:3, 2] = plan.affine[:3, 2]
    diff = difference(plan.affine, itk_affine, tolerance * 10)
    if diff or tuple(image.GetSize()) != plan.shape:
        raise CaseRejected(f"{name(plan.files[0])}: SimpleITK's volume {tuple(image.GetSize())} disagrees with "
                           f"the slice headers {plan.shape} ({diff or 'size'})")
    # ITK's z,y,x C-order buffer *is* NIfTI's x,y,z Fortran order: the transpose is a free view, and
    # nibabel writes it without reordering a byte (a C-contiguous copy cost more than the read). The
    # view into ITK's buffer lives only as long as ``image``: what is returned must own its memory.
    view = sitk.GetArrayViewFromImage(image).T
    result = convert(view) if convert is not None else view
    return result.copy(order="K") if np.may_share_memory(result, view) else result


def _culprit(plan: SeriesPlan, name: Callable[[Path], str]) -> str:
    """Which file broke the series read (only looked for once reading failed)."""
    for path in plan.files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            return f"{name(path)}: unreadable or truncated DICOM pixel data"
    return f"{name(plan.files[0])}: SimpleITK cannot read the series"


def read_seg(path: Path, plan: SeriesPlan, name: Callable[[Path], str]) -> np.ndarray:
    """A DICOM SEG as a label map on the source series' grid (X×Y×Z, values = segment numbers)."""
    import highdicom

    try:
        seg = highdicom.seg.segread(str(path))
    except Exception as error:  # highdicom raises many types on a malformed SEG
        raise CaseRejected(f"{name(path)}: unreadable DICOM SEG ({type(error).__name__})") from None
    if str(getattr(seg, "FrameOfReferenceUID", plan.frame_of_reference)) != plan.frame_of_reference:
        raise CaseRejected(f"{name(path)}: SEG frame of reference differs from its source series")
    if (int(seg.Rows), int(seg.Columns)) != (plan.shape[1], plan.shape[0]):
        raise CaseRejected(f"{name(path)}: SEG frames are {seg.Rows}x{seg.Columns}, the series' "
                           f"{plan.shape[1]}x{plan.shape[0]}")
    try:
        pixels = seg.get_pixels_by_source_instance(list(plan.sop_instances), combine_segments=True,
                                                   assert_missing_frames_are_empty=True, dtype=np.uint16)
    except (RuntimeError, ValueError, KeyError) as error:
        raise CaseRejected(f"{name(path)}: SEG cannot be mapped onto its source series ({error})") from None
    return np.ascontiguousarray(np.asarray(pixels).transpose(2, 1, 0))
