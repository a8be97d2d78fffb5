"""Masks come back on the input's exact grid: an oblique anisotropic NIfTI, nnU-Net channel files, a DICOM series."""

from __future__ import annotations

import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tasks.inference.batch import run_batch
from tests.infer.helpers import ThresholdNet, blobs, oblique_affine, plan_for, save_nifti, settings
from tests.ingest.makers import write_series


def sitk_geometry(image: sitk.Image) -> np.ndarray:
    return np.concatenate([image.GetOrigin(), image.GetSpacing(), image.GetDirection()])


def test_oblique_anisotropic_nifti_keeps_its_grid(tmp_path):
    shape = (10, 12, 7)
    data = blobs(shape, seed=1) * 100 + 5
    affine = oblique_affine()
    source = save_nifti(data.astype(np.int16), tmp_path / "in" / "oblique.nii.gz", affine)
    canonical = nib.as_closest_canonical(nib.load(str(source)))
    assert canonical.shape != shape  # the reorientation is not a no-op here
    model = ThresholdNet(3, level=50.0)
    plan = plan_for(3, list(canonical.shape))
    (outcome,) = run_batch(tmp_path / "in", tmp_path / "out", settings(), model, plan)
    assert outcome.status == "done", outcome.error

    # The model saw the canonical (training) orientation, normalised by the plan ("none": raw values).
    assert torch.equal(model.seen[0][0, 0], torch.as_tensor(np.array(canonical.dataobj), dtype=torch.float32))
    mask = nib.load(str(tmp_path / "out" / "oblique.nii.gz"))
    assert mask.shape == shape and np.allclose(mask.affine, affine, atol=1e-6)
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj), (data > 50).astype(np.uint8))
    # SimpleITK (a second reader) sees the same origin, spacing and direction.
    a, b = sitk.ReadImage(str(source)), sitk.ReadImage(str(tmp_path / "out" / "oblique.nii.gz"))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(sitk_geometry(a), sitk_geometry(b), atol=1e-4)

    report = json.loads((tmp_path / "out" / "oblique.json").read_text())
    voxel_ml = 0.7 * 1.3 * 3.1 / 1000
    assert report["class_volumes_ml"]["lesion"] == pytest.approx((data > 50).sum() * voxel_ml, rel=1e-4)
    assert set(report["timings"]) == {"read", "predict", "postprocess", "write"}
    assert report["cgm"]["available"] is False


def test_nnunet_channel_files_are_one_case_and_2d_stays_2d(tmp_path):
    inbox = tmp_path / "imagesTs"
    image = blobs((20, 16), seed=2) * 100
    save_nifti(image.astype(np.float32), inbox / "case1_0000.nii.gz")
    save_nifti(np.zeros((20, 16), np.float32), inbox / "case1_0001.nii.gz")
    save_nifti(image[:, :, None].astype(np.float32), inbox / "flat.nii.gz")  # X×Y×1 2D image, one channel
    model = ThresholdNet(2, level=50.0, in_channels=2)
    outcomes = run_batch(inbox, tmp_path / "out", settings(), model, plan_for(2, [16, 16], in_channels=2))
    by_id = {o.case_id: o for o in outcomes}
    assert by_id["case1"].status == "done", by_id["case1"].error
    assert by_id["flat"].status == "failed" and "1 channel(s), the model expects 2" in by_id["flat"].error
    mask = nib.load(str(tmp_path / "out" / "case1.nii.gz"))
    assert mask.shape == (20, 16)
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj), (image > 50).astype(np.uint8))


def test_dicom_series_gets_nifti_and_seg_on_the_series_grid(tmp_path):
    volume = (blobs((6, 14, 12), seed=3, radius=3.0) * 200).astype(np.uint16) + 1024  # Z×Y×X stored values
    orientation = (0.0, 0.96, 0.28, 0.0, -0.28, 0.96)  # oblique: rows and columns both tilted
    series = write_series(tmp_path / "in" / "study" / "series", volume, spacing=(0.7, 0.8, 2.5),
                          orientation=orientation)
    model = ThresholdNet(3, level=100.0)  # HU = stored - 1024: foreground at 200
    (outcome,) = run_batch(tmp_path / "in", tmp_path / "out", settings(roi_size=(8, 8, 8)), model,
                           plan_for(3, [8, 8, 8]))
    assert outcome.status == "done", outcome.error
    assert outcome.case_id.startswith("dcm-") and outcome.seg.endswith(".seg.dcm")

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "in" / "study" / "series")))
    original = reader.Execute()
    mask_image = sitk.ReadImage(outcome.mask)
    assert mask_image.GetSize() == original.GetSize()
    np.testing.assert_allclose(sitk_geometry(mask_image), sitk_geometry(original), atol=1e-4)
    expected = (sitk.GetArrayFromImage(original) > 100).astype(np.uint8)  # Z×Y×X in SimpleITK's order
    assert expected.any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask_image), expected)

    seg = hd.seg.segread(outcome.seg)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == series[0].StudyInstanceUID
    assert int(seg.NumberOfFrames) == len(series)  # empty frames kept: one frame per slice
    sop_by_position = {float(np.dot(np.asarray(ds.ImagePositionPatient, float),
                                    np.cross(orientation[:3], orientation[3:]))): ds.SOPInstanceUID for ds in series}
    ordered = [sop_by_position[h] for h in sorted(sop_by_position)]
    pixels = seg.get_pixels_by_source_instance(ordered, combine_segments=True)
    nifti = np.asanyarray(nib.load(outcome.mask).dataobj)  # X(columns)×Y(rows)×Z in slice order
    np.testing.assert_array_equal(np.asarray(pixels), nifti.transpose(2, 1, 0))
    report = json.loads((tmp_path / "out" / f"{outcome.case_id}.json").read_text())
    assert report["series_instance_uid"] == series[0].SeriesInstanceUID
