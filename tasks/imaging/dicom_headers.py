"""DICOM headers, scanned once: which files are DICOM, what each slice says, grouped later into series.

Each header is parsed from the file's first 64 KiB in memory (the whole file when the header runs past
it), and the few values needed are taken from the raw element bytes. Header values that identify the
patient (PatientName, PatientID) are read only to know which folder names to hide; they are never returned.
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

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from tasks.common.names import identity_tokens

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
