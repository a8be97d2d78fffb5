"""The one NIfTI reader of ingest and inference: the header is checked before any voxel is read.

A header can claim any shape, so nothing is allocated on its word: an absurd size is refused
against ``max_voxels``, an uncompressed ``.nii`` shorter than its header needs is called truncated
(nibabel would otherwise fail inside ``mmap``), a ``.nii.gz`` that cannot hold what its header claims
is called truncated too (nibabel would allocate the whole claimed array first; see
:mod:`tasks.imaging.gzip_bounds`), and voxel types that are not real numbers (complex, RGB) are
refused — all before the data is read. Every refusal is a
:class:`~tasks.common.errors.CaseRejected` whose message starts with the file's shown name and
names no other path of the machine: nibabel, zlib and SimpleITK put the absolute path in their
errors, and a report for people (``rejected.json``, inference summaries) must not carry it.

Callers choose what they accept: ingest reads labels as well as images and checks the geometry
against a second reader (training pairs must not be shifted against each other); inference accepts
NIfTI's vector form ``X×Y×Z×1×C`` and writes its mask with the input's own header, so it needs no
reader agreement.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from tasks.common.errors import CaseRejected
from tasks.common.names import printable
from tasks.imaging.geometry import check_readers_agree, nifti_affine
from tasks.imaging.gzip_bounds import inflated_size, max_inflated_size, trailer_allows

Role = Literal["image", "label"]
#: An absolute POSIX path of two or more parts; group 1 is its last part.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[^\s'\"(),;:/]+/)+([^\s'\"(),;:/]+)")


@dataclass(frozen=True)
class NiftiVolume:
    """Voxels ``X×Y×Z[×C]`` (a 2D file gets a unit Z axis), and the loaded image (header, affine, file shape)."""

    data: np.ndarray
    image: nib.Nifti1Image

    @property
    def affine(self) -> np.ndarray:
        return self.image.affine


def describe_error(error: BaseException, path: Path | None = None, name: str = "") -> str:
    """``Type: last line`` of an exception, short and printable, for a rejection message.

    Libraries name the file by its absolute path; that path becomes ``name`` (how the file is shown),
    any other absolute path its last part, so a report never shows where the inbox lies on this machine.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = without_paths(lines[-1] if lines else "", path, name)
    return printable(f"{type(error).__name__}: {text}"[:160])


def without_paths(text: str, path: Path | None = None, name: str = "") -> str:
    """``text`` with ``path`` in any absolute spelling (as given, absolute, symlinks resolved) replaced
    by ``name``, then every other absolute path by its last part."""
    if path is not None:
        forms = {os.path.abspath(path), os.path.realpath(path), str(path)}
        for form in sorted((f for f in forms if os.path.isabs(f)), key=len, reverse=True):
            text = text.replace(form, name)
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1), text)


def read_nifti(path: Path, name: str, *, role: Role = "image", max_voxels: int,
               geometry_tolerance: float | None = None, vector_channels: bool = False) -> NiftiVolume:
    """Read a NIfTI file once its header has passed every check; ``name`` is how messages show the file.

    ``geometry_tolerance``: also refuse ambiguous geometry (qform and sform disagree, or nibabel and
    SimpleITK read different affines). ``vector_channels``: accept ``X×Y×Z×1×C`` (returned as
    ``X×Y×Z×C``). A label's ``X×Y×Z×1`` is returned as ``X×Y×Z``.
    """
    try:
        return _read_checked(path, name, role, max_voxels, geometry_tolerance, vector_channels)
    except CaseRejected as rejection:  # a last net: helpers quote library errors (SimpleITK's name the path)
        shown = without_paths(str(rejection), path, name)
        if shown == str(rejection):
            raise
        raise CaseRejected(shown, code=rejection.code) from None


def _read_checked(path: Path, name: str, role: Role, max_voxels: int, geometry_tolerance: float | None,
                  vector_channels: bool) -> NiftiVolume:
    """:func:`read_nifti` itself: header checks, optional geometry checks, then the voxels."""
    image = open_header(path, name, role)
    check_header(image, path, name, role, max_voxels, vector_channels)
    if geometry_tolerance is not None:
        nifti_affine(image, name, geometry_tolerance)
        check_readers_agree(path, image, name, geometry_tolerance)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # zlib/EOF errors: a truncated or corrupt .nii.gz
        raise CaseRejected(f"{name}: {role} data is truncated or corrupt ({describe_error(error, path, name)})",
                           code="truncated") from None
    if data.ndim == 2:
        data = data[:, :, None]
    elif data.ndim == 5:  # X×Y×Z×1×C, NIfTI's vector intent (check_header let it through)
        data = data[:, :, :, 0]
    elif role == "label" and data.ndim == 4:
        data = data[..., 0]
    return NiftiVolume(data, image)


def open_header(path: Path, name: str, role: Role = "image") -> nib.Nifti1Image:
    """The file's header and a lazy proxy to its voxels (nothing of the data is read)."""
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for broken headers
        raise CaseRejected(f"{name}: unreadable {role} ({describe_error(error, path, name)})",
                           code="unreadable") from None
    if not isinstance(image, nib.Nifti1Image):
        raise CaseRejected(f"{name}: {role} is not a NIfTI-1 file ({type(image).__name__})", code="unreadable")
    return image


def check_header(image: nib.Nifti1Image, path: Path, name: str, role: Role, max_voxels: int,
                 vector_channels: bool = False) -> None:
    """Refuse what the header alone shows cannot be read safely: size, dimensions, voxel type, file length."""
    shape = tuple(int(s) for s in image.shape)
    if any(s <= 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) > max_voxels:
        raise CaseRejected(f"{name}: header claims {role} shape {shape}, refused (limit {max_voxels} voxels)",
                           code="too_large")
    vector = vector_channels and len(shape) == 5 and shape[3] == 1
    if not vector and (len(shape) not in (2, 3, 4) or (role == "label" and len(shape) == 4 and shape[3] != 1)):
        accepted = ["2D", "3D", *(["4D (channels last)"] if role == "image" else []),
                    *(["X×Y×Z×1×C (vector)"] if vector_channels else [])]
        raise CaseRejected(f"{name}: {role} has {len(shape)} dimensions {shape}; expected "
                           f"{', '.join(accepted[:-1])} or {accepted[-1]}", code="dimensions")
    dtype = image.get_data_dtype()
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise CaseRejected(f"{name}: {role} voxels are not real numbers ({dtype})", code="voxel_type")
    offset = int(getattr(image.dataobj, "offset", 352))
    voxel_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.name.endswith(".nii"):
        size = path.stat().st_size
        if size < offset + voxel_bytes:
            raise CaseRejected(f"{name}: truncated {role} file ({size} bytes, header needs {offset + voxel_bytes})",
                               code="truncated")
    elif path.name.endswith(".gz"):
        check_gzip_holds(path, name, role, offset, voxel_bytes)


def check_gzip_holds(path: Path, name: str, role: Role, offset: int, voxel_bytes: int) -> None:
    """Refuse a ``.nii.gz`` that cannot hold ``offset + voxel_bytes`` bytes, in little memory.

    nibabel allocates the whole claimed array before reading into it, so a short stream must be
    caught here: first against deflate's best ratio, then — when the gzip trailer does not vouch for
    the length — by inflating and counting (output discarded). See :mod:`tasks.imaging.gzip_bounds`.
    """
    needed = offset + voxel_bytes
    try:
        size = path.stat().st_size
        if needed > max_inflated_size(size):
            raise CaseRejected(f"{name}: header claims {voxel_bytes} bytes of {role} voxels, more than a "
                               f"{size}-byte gzip file can hold", code="truncated")
        if trailer_allows(path, needed):
            return
        inflated = inflated_size(path, needed)
    except OSError as error:
        raise CaseRejected(f"{name}: unreadable {role} ({describe_error(error, path, name)})",
                           code="unreadable") from None
    except zlib.error as error:
        raise CaseRejected(f"{name}: {role} data is truncated or corrupt ({describe_error(error, path, name)})",
                           code="truncated") from None
    if inflated < needed:
        raise CaseRejected(f"{name}: {role} data is truncated or corrupt (the gzip stream ends after {inflated} "
                           f"bytes, the header needs {needed})", code="truncated")
