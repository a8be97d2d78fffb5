"""One geometry check for every reader: voxel → RAS-world affines compared within a tolerance.

NIfTI (nibabel), DICOM (SimpleITK's GDCM reader, checked against the slice headers) and DICOM
SEG all end up as a 4×4 RAS affine, so image/label agreement, reader/reader agreement and
header/volume agreement are the same comparison with the same message. A NIfTI file that two
common readers interpret differently (qform vs sform, the ``*_code`` choice) is refused rather
than guessed: the model would otherwise learn on labels shifted against their images.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from tasks.common.errors import CaseRejected

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_from_lps(spacing: tuple[float, ...], origin: tuple[float, ...], direction: tuple[float, ...]) -> np.ndarray:
    """RAS affine from ITK/DICOM geometry (LPS world, row-major direction), padded to 3D."""
    dim = len(spacing)
    matrix = np.eye(3)
    keep = min(dim, 3)
    matrix[:keep, :keep] = np.asarray(direction, float).reshape(dim, dim)[:keep, :keep]
    space = np.ones(3)
    space[: min(dim, 3)] = np.asarray(spacing, float)[:3]
    world = np.zeros(3)
    world[: min(dim, 3)] = np.asarray(origin, float)[:3]
    lps = np.eye(4)
    lps[:3, :3] = matrix @ np.diag(space)
    lps[:3, 3] = world
    return LPS_TO_RAS @ lps


def affine_from_sitk(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    return affine_from_lps(image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def describe(affine: np.ndarray) -> dict[str, list[float]]:
    """Spacing, origin and direction cosines of an affine, rounded for messages and the manifest."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / np.where(spacing == 0, 1, spacing)
    return {"spacing": [round(float(s), 6) for s in spacing], "origin": [round(float(o), 4) for o in affine[:3, 3]],
            "direction": [round(float(d), 6) for d in direction.T.ravel()]}


def difference(a: np.ndarray, b: np.ndarray, tolerance: float) -> str | None:
    """None when two affines agree within ``tolerance``; else which of spacing/origin/direction differ."""
    spacing_a, spacing_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    parts = []
    if not np.allclose(spacing_a, spacing_b, atol=tolerance, rtol=0):
        parts.append(f"spacing {np.round(spacing_a, 5).tolist()} vs {np.round(spacing_b, 5).tolist()}")
    if not np.allclose(a[:3, 3], b[:3, 3], atol=tolerance, rtol=0):
        parts.append(f"origin {np.round(a[:3, 3], 4).tolist()} vs {np.round(b[:3, 3], 4).tolist()}")
    dir_a = a[:3, :3] / np.where(spacing_a == 0, 1, spacing_a)
    dir_b = b[:3, :3] / np.where(spacing_b == 0, 1, spacing_b)
    if not np.allclose(dir_a, dir_b, atol=tolerance, rtol=0):
        parts.append(f"direction {nib.aff2axcodes(a)} vs {nib.aff2axcodes(b)}"
                     f" (max cosine difference {float(np.abs(dir_a - dir_b).max()):.2g})")
    return "; ".join(parts) or None


def check_same_grid(shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...],
                    affine_b: np.ndarray, tolerance: float, what: str, name: str) -> None:
    """Refuse two volumes that are not on the same voxel grid (shape, spacing, origin, direction)."""
    if tuple(shape_a[:3]) != tuple(shape_b[:3]):
        raise CaseRejected(f"{name}: {what} shape {tuple(shape_b[:3])} != image shape {tuple(shape_a[:3])}",
                           code="geometry")
    diff = difference(affine_a, affine_b, tolerance)
    if diff:
        raise CaseRejected(f"{name}: {what} geometry differs from the image's beyond {tolerance}: {diff}",
                           code="geometry")


def nifti_affine(image: nib.Nifti1Image, name: str, tolerance: float) -> np.ndarray:
    """nibabel's affine, refused when the header's qform and sform both apply and disagree."""
    header = image.header
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode > 0 and scode > 0:
        diff = difference(header.get_qform(), header.get_sform(), tolerance)
        if diff:
            raise CaseRejected(f"{name}: qform (code {qcode}) and sform (code {scode}) disagree ({diff}); "
                               f"readers pick different ones, so the geometry is ambiguous", code="geometry")
    return image.affine


def check_readers_agree(path: Path, image: nib.Nifti1Image, name: str, tolerance: float) -> None:
    """SimpleITK's reading of the same header (no voxels are read) must give nibabel's affine."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise CaseRejected(f"{name}: SimpleITK cannot read the header ({_first_line(error)})",
                           code="unreadable") from None
    dims = len(image.shape)
    itk_size = tuple(reader.GetSize())
    if itk_size[: min(dims, 3)] != tuple(image.shape[: min(dims, 3)]):
        raise CaseRejected(f"{name}: nibabel reads shape {image.shape}, SimpleITK {itk_size}", code="geometry")
    diff = difference(image.affine, affine_from_sitk(reader), tolerance)
    if diff:
        header = image.header
        raise CaseRejected(
            f"{name}: nibabel and SimpleITK read different geometry ({diff}; qform_code "
            f"{int(header['qform_code'])}, sform_code {int(header['sform_code'])}); refusing to guess", code="geometry")


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__
