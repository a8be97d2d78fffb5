"""Checks over the whole dataset, not one case: one dimensionality, case IDs unique ignoring letter case,
single DICOM slices only in a declared 2D dataset, and every file the source did not use listed with why."""

import json
from pathlib import Path

import numpy as np

from tasks.config import DataConfig
from tasks.ingest.batch import ingest_dataset
from tests.ingest.makers import LABELS, save_nifti, write_series

PAIRS = {"source": "pairs", "instance_labels": False, "label_names": LABELS}


def pair(raw: Path, case: str, shape: tuple[int, ...]) -> None:
    label = np.zeros(shape, np.uint8)
    label[(slice(1, 3),) * len(shape)] = 1
    save_nifti(np.random.default_rng(0).normal(size=shape).astype(np.float32), raw / "images" / f"{case}.nii.gz")
    save_nifti(label, raw / "labels" / f"{case}.nii.gz")


def rejected(out: Path) -> dict[str, dict]:
    return {r["case_id"]: r for r in json.loads((out / "rejected.json").read_text())["rejected"]}


def test_a_2d_image_in_a_3d_dataset_is_refused_and_the_other_way_round(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for case in ("vol_a", "vol_b"):
        pair(raw, case, (8, 8, 4))
    pair(raw, "flat", (8, 8))  # a plain 2D image, which nibabel would take as X×Y×1
    manifest, _ = ingest_dataset(raw, out, DataConfig(**PAIRS))
    assert sorted(c["case_id"] for c in manifest["cases"]) == ["vol_a", "vol_b"]
    assert rejected(out)["flat"]["code"] == "dimensions"
    assert rejected(out)["flat"]["reason"] == "images/flat.nii.gz: 2D image, but the rest of the dataset is 3D"
    # declared 2D: the volumes are the odd ones out, whatever the majority
    manifest, _ = ingest_dataset(raw, tmp_path / "out2d", DataConfig(**PAIRS, spatial_dims=2))
    assert [c["case_id"] for c in manifest["cases"]] == ["flat"]
    assert rejected(tmp_path / "out2d")["vol_a"]["reason"] == (
        "images/vol_a.nii.gz: 3D image, but the dataset (declared in params.yaml) is 2D")


def test_case_ids_that_differ_only_in_letter_case_are_both_refused(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for case in ("Case_A", "case_a", "other"):
        pair(raw, case, (8, 8, 4))
    manifest, _ = ingest_dataset(raw, out, DataConfig(**PAIRS))
    assert [c["case_id"] for c in manifest["cases"]] == ["other"]
    problems = rejected(out)
    assert problems["Case_A"]["code"] == problems["case_a"]["code"] == "duplicate_id"
    assert problems["Case_A"]["reason"] == (
        "images/Case_A.nii.gz: case ID Case_A differs from case_a only in letter case")
    assert not list((out / "imagesTr").glob("*ase_*"))  # nothing written that could overwrite the other


def test_a_single_dicom_slice_is_a_volume_only_in_a_declared_2d_dataset(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    volume = np.random.default_rng(1).integers(0, 3000, (4, 12, 10)).astype(np.uint16)
    write_series(raw / "ct", volume)
    write_series(raw / "scout", volume[:1])
    data = {"instance_labels": False, "label_names": LABELS, "label_pattern": "labels/{case}.nii.gz"}
    ingest_dataset(raw, out, DataConfig(**data))
    single = [r for r in rejected(out).values() if r["code"] == "dimensions"]
    assert len(single) == 1 and single[0]["reason"].endswith(
        "a series of one slice is not a volume; a 2D dataset of single slices must be declared (data.spatial_dims: 2)")
    ingest_dataset(raw, tmp_path / "out2d", DataConfig(**data, spatial_dims=2))
    assert not [r for r in rejected(tmp_path / "out2d").values() if "one slice" in r["reason"]]


def test_every_file_the_source_did_not_use_is_listed_as_ignored(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    pair(raw, "good", (8, 8, 4))
    (raw / "images" / ".DS_Store").write_bytes(b"\0\1")
    (raw / ".hidden").mkdir()
    (raw / ".hidden" / "old.nii.gz").write_bytes(b"x")
    (raw / "notes.txt").write_text("scanned on the old scanner")
    (raw / "images" / "good.json").write_text("{}")
    manifest, _ = ingest_dataset(raw, out, DataConfig(**PAIRS))
    assert manifest["num_cases"] == 1
    ignored = {i["file"]: i["reason"] for i in json.loads((out / "rejected.json").read_text())["ignored"]}
    assert ignored == {".hidden/old.nii.gz": "hidden file or folder", "images/.DS_Store": "hidden file or folder",
                       "images/good.json": "not part of the pairs layout", "notes.txt": "not part of the pairs layout"}
