"""The one NIfTI reader of ingest and inference: the header is checked before any voxel is read.

A header can claim any shape, so nothing is allocated on its word: an absurd size is refused
against ``max_voxels``, an uncompressed ``.nii`` shorter than its header needs is called truncated
(nibabel would otherwise fail inside ``mmap``), and voxel types that are not real numbers (complex,
RGB) are refused — all before the data is read. Every refusal is a
:class:`~tasks.common.errors.CaseRejected` whose message starts with the file's shown name.

Callers choose what they accept: ingest reads labels as well as images and checks the geometry
against a second reader (training pairs must not be shifted against each other); inference accepts
NIfTI's vector form ``X×Y×Z×1×C`` and writes its mask with the input's own header, so it needs no
reader agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from tasks.common.errors import CaseRejected
from tasks.common.names import printable
from tasks.imaging.geometry import check_readers_agree, nifti_affine

Role = Literal["image", "label"]


@dataclass(frozen=True)
class NiftiVolume:
    """Voxels ``X×Y×Z[×C]`` (a 2D file gets a unit Z axis), and the loaded image (header, affine, file shape)."""

    data: np.ndarray
    image: nib.Nifti1Image

    @property
    def affine(self) -> np.ndarray:
        return self.image.affine


def describe_error(error: BaseException) -> str:
    """``Type: last line`` of an exception, short and printable, for a rejection message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return printable(f"{type(error).__name__}: {text}"[:160])


def read_nifti(path: Path, name: str, *, role: Role = "image", max_voxels: int,
               geometry_tolerance: float | None = None, vector_channels: bool = False) -> NiftiVolume:
    """Read a NIfTI file once its header has passed every check; ``name`` is how messages show the file.

    ``geometry_tolerance``: also refuse ambiguous geometry (qform and sform disagree, or nibabel and
    SimpleITK read different affines). ``vector_channels``: accept ``X×Y×Z×1×C`` (returned as
    ``X×Y×Z×C``). A label's ``X×Y×Z×1`` is returned as ``X×Y×Z``.
    """
    image = open_header(path, name, role)
    check_header(image, path, name, role, max_voxels, vector_channels)
    if geometry_tolerance is not None:
        nifti_affine(image, name, geometry_tolerance)
        check_readers_agree(path, image, name, geometry_tolerance)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # zlib/EOF errors: a truncated or corrupt .nii.gz
        raise CaseRejected(f"{name}: {role} data is truncated or corrupt ({describe_error(error)})",
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
        raise CaseRejected(f"{name}: unreadable {role} ({describe_error(error)})", code="unreadable") from None
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
    if path.name.endswith(".nii"):
        offset = int(getattr(image.dataobj, "offset", 352))
        needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = path.stat().st_size
        if size < needed:
            raise CaseRejected(f"{name}: truncated {role} file ({size} bytes, header needs {needed})", code="truncated")
