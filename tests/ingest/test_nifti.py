"""NIfTI sources on real files written by nibabel: nnU-Net/MSD folders and pattern-matched pairs."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from tasks.common.hashing import sha256_file
from tasks.config import DataConfig
from tasks.imaging.geometry import affine_from_sitk
from tasks.ingest.batch import ingest_dataset
from tests.ingest.makers import LABELS, save_nifti, write_dataset_json

LPS = np.diag([-0.8, -0.8, 2.5, 1.0])  # an LPS-oriented, anisotropic volume


def config(**changes) -> DataConfig:
    return DataConfig(label_names=LABELS, **changes)


def label_volume(shape=(12, 10, 6)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[3:7, 2:6, 1:4] = 1
    return label


def test_nnunet_multichannel_and_msd_4d(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    (raw / "dataset.json").parent.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"},
                                                  "labels": {"background": 0, "organ": 1}}))
    channels = [rng.normal(size=(12, 10, 6)).astype(np.float32) for _ in range(2)]
    for c, data in enumerate(channels):
        save_nifti(data, raw / "imagesTr" / f"brain_001_{c:04d}.nii.gz", LPS)
    save_nifti(label_volume(), raw / "labelsTr" / "brain_001.nii.gz", LPS)
    msd = np.stack(channels, axis=3)  # MSD: one 4D file per case
    save_nifti(msd, raw / "imagesTr" / "brain_002.nii.gz", LPS)
    save_nifti(label_volume(), raw / "labelsTr" / "brain_002.nii.gz", LPS)
    manifest, results = ingest_dataset(raw, tmp_path / "out", config())
    assert [r.reason for r in results if not r.accepted] == []
    assert manifest["modality"] == "T1" and manifest["source"] == "nnunet"
    assert manifest["channel_names"] == ["T1", "T2"]  # dataset.json's, in channel order
    for case in manifest["cases"]:
        assert case["channels"] == 2 and case["shape"] == [12, 10, 6, 2]
        image = nib.load(str(tmp_path / "out" / case["files"]["image"]))
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert np.array_equal(np.asarray(image.dataobj)[::-1, ::-1], msd)


def test_pairs_by_pattern_match_nibabel_and_simpleitk(tmp_path):
    rng = np.random.default_rng(1)
    raw = tmp_path / "raw"
    oblique = np.array([[0.0, -0.9, 0, 4.0], [1.1, 0.0, 0, -3.0], [0, 0, -2.0, 7.5], [0, 0, 0, 1]])
    for name in ("a", "b"):
        save_nifti(rng.normal(size=(9, 7, 5)).astype(np.float32), raw / "scans" / f"{name}_ct.nii.gz", oblique)
        save_nifti(label_volume((9, 7, 5)), raw / "masks" / f"{name}_seg.nii.gz", oblique)
    manifest, results = ingest_dataset(raw, tmp_path / "out", config(
        image_pattern="scans/{case}_ct.nii.gz", label_pattern="masks/{case}_seg.nii.gz"))
    assert manifest["source"] == "pairs" and {c["case_id"] for c in manifest["cases"]} == {"a", "b"}
    for case in manifest["cases"]:
        out = tmp_path / "out" / case["files"]["image"]
        source = nib.load(str(raw / "scans" / f"{case['case_id']}_ct.nii.gz"))
        canonical = nib.as_closest_canonical(source)
        written = nib.load(str(out))
        # Geometry as nibabel and SimpleITK report it, within 1e-4; voxels only reordered.
        assert np.allclose(written.affine, canonical.affine, atol=1e-4)
        assert np.allclose(affine_from_sitk(sitk.ReadImage(str(out))), canonical.affine, atol=1e-4)
        assert np.allclose(case["spacing"], [0.9, 1.1, 2.0], atol=1e-4)  # axes swapped into RAS order
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(canonical.dataobj))
        assert case["sha256"]["image"] == sha256_file(out)
        assert case["source"]["image"] == f"scans/{case['case_id']}_ct.nii.gz"


def test_output_is_ras_with_checksums(tmp_path):
    rng = np.random.default_rng(2)
    raw = tmp_path / "raw"
    source = rng.normal(size=(12, 10, 6)).astype(np.float32)
    write_dataset_json(raw, LABELS)
    save_nifti(source, raw / "imagesTr" / "good_a.nii.gz", LPS)
    save_nifti(label_volume(), raw / "labelsTr" / "good_a.nii.gz", LPS)
    manifest, _ = ingest_dataset(raw, tmp_path / "out", config())
    (case,) = manifest["cases"]
    image = nib.load(str(tmp_path / "out" / case["files"]["image"]))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert np.allclose(case["spacing"], [0.8, 0.8, 2.5])
    assert np.array_equal(np.asarray(image.dataobj)[::-1, ::-1, :], source)
    assert case["sha256"]["image"] == sha256_file(tmp_path / "out" / case["files"]["image"])
    assert set(case) >= {"case_id", "files", "sha256", "spacing", "shape", "channels"}
    assert set(manifest) >= {"cases", "labels", "instance_labels", "modality", "channel_names"}


def test_instance_labels_write_instances(tmp_path):
    raw = tmp_path / "raw"
    label = np.zeros((8, 8, 1), np.uint16)
    label[1:3, 1:3], label[5:7, 5:7] = 1, 2
    save_nifti(np.ones((8, 8, 1), np.float32), raw / "imagesTr" / "cells.nii.gz")
    save_nifti(label, raw / "labelsTr" / "cells.nii.gz")
    write_dataset_json(raw, {"background": 0, "cell": 1})  # one class: labels can be its instance maps
    manifest, _ = ingest_dataset(raw, tmp_path / "out", DataConfig(instance_labels=True))
    (case,) = manifest["cases"]
    assert case["n_objects"] == 2 and Path(tmp_path / "out" / case["files"]["instances"]).exists()


def test_integer_images_are_stored_in_the_narrowest_type_that_holds_every_value(tmp_path):
    raw = tmp_path / "raw"
    cases = {"byte_range": (np.int32, 0, 255, "uint8"), "ct_range": (np.int32, -1024, 3071, "int16"),
             "wide": (np.int64, -5, 70_000, "int32"), "full_uint16": (np.uint16, 0, 65_535, "uint16")}
    volumes = {}
    write_dataset_json(raw, LABELS)
    for case, (dtype, low, high, _) in cases.items():
        volume = np.random.default_rng(0).integers(low, high + 1, (12, 10, 6)).astype(dtype)
        volume.flat[:2] = low, high  # the extremes are present
        volumes[case] = volume
        image = nib.Nifti1Image(volume, np.eye(4), dtype=volume.dtype)  # nibabel wants int64 asked for
        (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
        nib.save(image, str(raw / "imagesTr" / f"{case}.nii.gz"))
        save_nifti(label_volume(), raw / "labelsTr" / f"{case}.nii.gz")
    manifest, _ = ingest_dataset(raw, tmp_path / "out", config())
    for case in manifest["cases"]:
        written = nib.load(str(tmp_path / "out" / case["files"]["image"]))
        assert case["dtype"] == cases[case["case_id"]][3] == str(written.get_data_dtype())
        assert np.array_equal(np.asarray(written.dataobj), volumes[case["case_id"]])  # not one value changed
