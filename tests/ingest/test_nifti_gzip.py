"""The canonical .nii.gz writer: standard gzip any reader opens, equal voxels give equal bytes,
the returned sha256 is the file's, an unchanged file is not touched, a failed write loses nothing."""

import gzip
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tasks.imaging import nifti_writer as nifti_gzip
from tasks.imaging.nifti_writer import save_nifti_gz

AFFINE = np.array([[-0.7, 0, 0, 12.5], [0, 0.8, 0, -3.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])


def volume() -> np.ndarray:
    # A flipped, transposed view (what reorienting DICOM to RAS gives): not contiguous in any order.
    stored = np.random.default_rng(0).integers(-1024, 3000, (9, 14, 11)).astype(np.int16)
    return stored.T[::-1, ::-1]


def test_readers_see_the_voxels_and_geometry_and_bytes_match_nibabel(tmp_path: Path):
    data = volume()
    digest, written = save_nifti_gz(data, AFFINE, tmp_path / "a.nii.gz")
    assert written and digest == hashlib.sha256((tmp_path / "a.nii.gz").read_bytes()).hexdigest()
    image = nib.load(str(tmp_path / "a.nii.gz"))
    assert np.array_equal(np.asanyarray(image.dataobj), data) and image.get_data_dtype() == np.int16
    assert np.allclose(image.affine, AFFINE) and image.header.get_xyzt_units() == ("mm", "sec")
    itk = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(itk), data.T)
    reference = nib.Nifti1Image(data, AFFINE)
    reference.header.set_xyzt_units("mm", "sec")
    nib.save(reference, str(tmp_path / "reference.nii"))
    assert gzip.decompress((tmp_path / "a.nii.gz").read_bytes()) == (tmp_path / "reference.nii").read_bytes()


def test_same_voxels_same_bytes_and_an_unchanged_file_is_left_alone(tmp_path: Path):
    data = volume()
    first, _ = save_nifti_gz(data, AFFINE, tmp_path / "a.nii.gz")
    other, _ = save_nifti_gz(np.ascontiguousarray(data), AFFINE, tmp_path / "b.nii.gz")
    assert first == other  # no timestamp or name in the gzip header, memory layout does not matter
    stamp = (tmp_path / "a.nii.gz").stat().st_mtime_ns
    again, written = save_nifti_gz(data, AFFINE, tmp_path / "a.nii.gz")
    assert (again, written) == (first, False) and (tmp_path / "a.nii.gz").stat().st_mtime_ns == stamp
    changed = data.copy()
    changed[0, 0, 0] += 1
    digest, written = save_nifti_gz(changed, AFFINE, tmp_path / "a.nii.gz")
    assert written and digest != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]  # no temporaries left


def test_a_write_that_dies_half_way_keeps_the_previous_file_whole(tmp_path: Path, monkeypatch):
    target = tmp_path / "a.nii.gz"
    digest, _ = save_nifti_gz(volume(), AFFINE, target)
    calls = []

    class DiskFull(OSError):
        pass

    def write_then_fail(self, data):  # the device fills up after the header and a first slab
        calls.append(len(data))
        if len(calls) > 2:
            raise DiskFull("no space left on device")
        return original(self, data)

    original = nifti_gzip._GzipSink.write
    monkeypatch.setattr(nifti_gzip._GzipSink, "write", write_then_fail)
    with pytest.raises(DiskFull):
        save_nifti_gz(volume() + 1, AFFINE, target)
    assert len(calls) == 3
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]
