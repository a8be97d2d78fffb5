"""Ingest on real NIfTI files written by nibabel: good cases land canonical, bad ones are named."""

from pathlib import Path

import nibabel as nib
import numpy as np

from tasks.ingest import discover_cases, ingest_case, sha256_file, write_manifest

LABELS = {"background": 0, "organ": 1}


def save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def make_inbox(root: Path) -> None:
    rng = np.random.default_rng(0)
    lps = np.diag([-0.8, -0.8, 2.5, 1.0])  # an LPS-oriented, anisotropic volume
    for name in ("good_a", "good_b"):
        image = rng.normal(size=(12, 10, 6)).astype(np.float32)
        label = np.zeros((12, 10, 6), np.uint8)
        label[3:7, 2:6, 1:4] = 1
        save(image, root / "imagesTr" / f"{name}.nii.gz", lps)
        save(label, root / "labelsTr" / f"{name}.nii.gz", lps)
    save(rng.normal(size=(8, 8, 4)).astype(np.float32), root / "imagesTr" / "shape_mismatch.nii.gz")
    save(np.zeros((8, 8, 5), np.uint8), root / "labelsTr" / "shape_mismatch.nii.gz")
    save(rng.normal(size=(8, 8, 4)).astype(np.float32), root / "imagesTr" / "bad_values.nii.gz")
    save(np.full((8, 8, 4), 7, np.uint8), root / "labelsTr" / "bad_values.nii.gz")
    nan = rng.normal(size=(8, 8, 4)).astype(np.float32)
    nan[0, 0, 0] = np.nan
    save(nan, root / "imagesTr" / "has_nan.nii.gz")
    save(np.zeros((8, 8, 4), np.uint8), root / "labelsTr" / "has_nan.nii.gz")
    save(rng.normal(size=(8, 8, 4)).astype(np.float32), root / "imagesTr" / "moved.nii.gz")
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    save(np.zeros((8, 8, 4), np.uint8), root / "labelsTr" / "moved.nii.gz", shifted)
    (root / "imagesTr" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    save(np.zeros((8, 8, 4), np.uint8), root / "labelsTr" / "corrupt.nii.gz")
    save(rng.normal(size=(8, 8, 4)).astype(np.float32), root / "imagesTr" / "no_label.nii.gz")
    save(rng.normal(size=(8, 8, 4)).astype(np.float32), root / "imagesTr" / "-rf;echo.nii.gz")
    save(np.zeros((8, 8, 4), np.uint8), root / "labelsTr" / "-rf;echo.nii.gz")
    save(rng.normal(size=(8, 8, 4)).astype(np.float32), root / "imagesTr" / "empty_label.nii.gz")
    save(np.zeros((8, 8, 4), np.uint8), root / "labelsTr" / "empty_label.nii.gz")


def ingest_all(root: Path, out: Path) -> tuple[dict, list]:
    sources, problems = discover_cases(root / "imagesTr", root / "labelsTr")
    results = problems + [ingest_case(s, out, LABELS, instance_labels=False) for s in sources]
    return write_manifest(out, results, LABELS, False), results


def test_each_bad_case_is_named_with_its_reason_and_good_cases_land(tmp_path):
    make_inbox(tmp_path / "raw")
    manifest, results = ingest_all(tmp_path / "raw", tmp_path / "out")
    reasons = {r.case_id: r.reason for r in results if not r.accepted}
    assert {c["case_id"] for c in manifest["cases"]} == {"good_a", "good_b", "empty_label"}
    assert "label shape" in reasons["shape_mismatch"]
    assert "outside the declared classes" in reasons["bad_values"] and "[7]" in reasons["bad_values"]
    assert "NaN" in reasons["has_nan"]
    assert "geometry" in reasons["moved"]
    assert "corrupt.nii.gz" in reasons["corrupt"] and "unreadable" in reasons["corrupt"]
    assert "no label" in reasons["no_label"]
    assert any("unsafe case ID" in reason for reason in reasons.values())
    assert not any(Path(tmp_path / "out").rglob("-rf*"))
    empty = next(c for c in manifest["cases"] if c["case_id"] == "empty_label")
    assert "empty" in empty["warnings"][0]


def test_output_is_ras_with_checksums(tmp_path):
    make_inbox(tmp_path / "raw")
    manifest, _ = ingest_all(tmp_path / "raw", tmp_path / "out")
    case = next(c for c in manifest["cases"] if c["case_id"] == "good_a")
    image = nib.load(str(tmp_path / "out" / case["files"]["image"]))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert np.allclose(case["spacing"], [0.8, 0.8, 2.5])
    source = nib.load(str(tmp_path / "raw" / "imagesTr" / "good_a.nii.gz"))
    # Same voxels, only reordered: flipping the two L/P axes back gives the source exactly.
    assert np.array_equal(np.asarray(image.dataobj)[::-1, ::-1, :], np.asarray(source.dataobj))
    assert case["sha256"]["image"] == sha256_file(tmp_path / "out" / case["files"]["image"])


def test_reingest_rewrites_nothing(tmp_path):
    make_inbox(tmp_path / "raw")
    first, _ = ingest_all(tmp_path / "raw", tmp_path / "out")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.nii.gz")}
    second, results = ingest_all(tmp_path / "raw", tmp_path / "out")
    assert not any(r.written for r in results)
    assert first == second
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.nii.gz")}
