"""One batch, many bad cases: each is named with its file and its own reason; the good cases still land."""

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from tasks.config import DataConfig
from tasks.ingest.batch import ingest_dataset
from tests.ingest.makers import LABELS, save_nifti, write_dataset_json, write_seg, write_series

rng = np.random.default_rng(0)


def noise(shape=(8, 8, 4)) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def make_nifti_inbox(raw: Path) -> dict[str, str]:
    """Bad NIfTI cases in an nnU-Net layout → the words their rejection must contain."""
    images, labels = raw / "imagesTr", raw / "labelsTr"
    write_dataset_json(raw, LABELS)  # the classes: values outside them are refused
    lps = np.diag([-0.8, -0.8, 2.5, 1.0])
    for name in ("good_a", "good_b"):
        label = np.zeros((12, 10, 6), np.uint8)
        label[3:7, 2:6, 1:4] = 1
        save_nifti(noise((12, 10, 6)), images / f"{name}.nii.gz", lps)
        save_nifti(label, labels / f"{name}.nii.gz", lps)
    save_nifti(noise(), images / "empty_label.nii.gz")
    save_nifti(np.zeros((8, 8, 4), np.uint8), labels / "empty_label.nii.gz")
    expected = {}

    def case(name: str, image: np.ndarray | None, label: np.ndarray | None, why: str,
             label_affine: np.ndarray | None = None) -> None:
        if image is not None:
            save_nifti(image, images / f"{name}.nii.gz")
        if label is not None:
            save_nifti(label, labels / f"{name}.nii.gz", label_affine)
        expected[name] = why

    zeros = np.zeros((8, 8, 4), np.uint8)
    case("shape_mismatch", noise(), np.zeros((8, 8, 5), np.uint8), "label shape (8, 8, 5) != image shape (8, 8, 4)")
    case("bad_values", noise(), np.full((8, 8, 4), 7, np.uint8), "label values [7] outside the declared classes")
    nan = noise()
    nan[0, 0, 0] = np.nan
    case("has_nan", nan, zeros, "1 NaN or infinite voxels")
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    case("moved", noise(), zeros, "label geometry differs from the image's beyond 0.0001: origin", label_affine=shifted)
    case("no_label", noise(), None, "no label in labelsTr/")
    case("four_d_label", noise(), np.zeros((8, 8, 4, 3), np.uint8), "label has 4 dimensions")
    case("float_label", noise(), np.full((8, 8, 4), 0.5, np.float32), "label values are not integers")
    case("negative", noise(), np.full((8, 8, 4), -1, np.int16), "negative label values")
    case("five_d", noise((4, 4, 4, 1, 2)), zeros, "image has 5 dimensions")
    (images / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    case("corrupt", None, zeros, "corrupt.nii.gz: unreadable image")
    save_nifti(noise((32, 32, 16)), images / "cut.nii.gz")
    blob = (images / "cut.nii.gz").read_bytes()
    (images / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    case("cut", None, np.zeros((32, 32, 16), np.uint8), "image data is truncated or corrupt")
    save_nifti(noise(), images / "short.nii")
    (images / "short.nii").write_bytes((images / "short.nii").read_bytes()[:-100])
    case("short", None, zeros, "truncated image file")
    huge = nib.Nifti1Header()
    huge.set_data_shape((30000, 30000, 30000))
    huge.set_data_dtype(np.float32)
    with gzip.open(images / "huge.nii.gz", "wb") as handle:
        handle.write(huge.binaryblock + b"\0" * 4)
    case("huge", None, zeros, "header claims image shape (30000, 30000, 30000), refused")
    ambiguous = nib.Nifti1Image(noise(), None)
    ambiguous.set_qform(np.diag([2.0, 2.0, 3.0, 1.0]), code=1)
    ambiguous.set_sform(np.diag([2.0, 2.0, 3.0, 1.0]) + _translation(1.0), code=2)
    nib.save(ambiguous, images / "qsform.nii.gz")
    case("qsform", None, zeros, "qform (code 1) and sform (code 2) disagree")
    no_codes = nib.Nifti1Image(noise(), None)
    no_codes.set_qform(None, code=0)
    no_codes.set_sform(None, code=0)
    nib.save(no_codes, images / "readers.nii.gz")
    case("readers", None, zeros, "nibabel and SimpleITK read different geometry")
    save_nifti(noise(), images / "twice.nii")
    save_nifti(noise(), images / "twice.nii.gz")
    case("twice", None, zeros, "duplicate case ID twice")
    save_nifti(zeros, labels / "orphan.nii.gz")
    expected["orphan"] = "labelsTr/orphan.nii.gz: label without an image"
    for hostile in ("-rf;echo", "evil\nINFO forged line", "a$(id)"):
        save_nifti(noise(), images / f"{hostile}.nii.gz")
        save_nifti(zeros, labels / f"{hostile}.nii.gz")
    return expected


def _translation(x: float) -> np.ndarray:
    shift = np.zeros((4, 4))
    shift[0, 3] = x
    return shift


def test_every_bad_nifti_case_is_named_and_good_cases_land(tmp_path):
    expected = make_nifti_inbox(tmp_path / "raw")
    manifest, results = ingest_dataset(tmp_path / "raw", tmp_path / "out", DataConfig(
        instance_labels=False, label_names=LABELS))
    assert {c["case_id"] for c in manifest["cases"]} == {"good_a", "good_b", "empty_label"}
    reasons = {r.case_id: r.reason for r in results if not r.accepted}
    for case, why in expected.items():
        assert why in reasons[case], (case, reasons.get(case))
        assert case in reasons[case] or why.startswith("labelsTr/"), reasons[case]  # names the file
    assert len(set(reasons.values())) == len(reasons)  # each its own message
    unsafe = [reason for reason in reasons.values() if "unsafe case ID" in reason]
    assert len(unsafe) == 3 and all("\n" not in reason for reason in reasons.values())
    assert any("evil\\nINFO" in reason for reason in unsafe)
    assert not any(p.name.startswith(("-", "evil", "a$")) for p in (tmp_path / "out").rglob("*"))
    empty = next(c for c in manifest["cases"] if c["case_id"] == "empty_label")
    assert "label is empty" in empty["warnings"][0]


def make_dicom_inbox(raw: Path) -> dict[str, str]:
    """Bad DICOM series (case IDs from folder names) → the words their rejection must contain."""
    volume = rng.integers(0, 2000, (6, 12, 10)).astype(np.uint16)
    mask = np.zeros(volume.shape, bool)
    mask[1:4, 2:6, 2:6] = True
    write_seg(raw / "segs" / "good", write_series(raw / "good", volume), mask)
    expected = {}
    write_series(raw / "missing", volume, heights=[0, 2.5, 5, 10, 12.5, 15])
    expected["missing"] = "1 slice(s) missing before this one (gap 5 mm, spacing 2.5 mm)"
    write_series(raw / "uneven", volume, heights=[0, 2.5, 5, 7.5, 9.1, 12.5])
    expected["uneven"] = "unevenly spaced slices"
    study, series, frame = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.6"
    write_series(raw / "acquisitions", volume[:3], study=study, series=series, frame=frame, acquisition=1)
    write_series(raw / "acquisitions", volume[:3], study=study, series=series, frame=frame, acquisition=2, prefix="X")
    expected["acquisitions"] = "two acquisitions (AcquisitionNumber 1 and 2) mixed in one series"
    write_series(raw / "mixed", volume[:3], study=study, series="1.2.3.7", frame="1.2.3.8")
    write_series(raw / "mixed", volume[:3], study=study, series="1.2.3.7", frame="1.2.3.9", prefix="Y",
                 heights=[10, 12.5, 15])
    expected["mixed"] = "two series mixed in one volume (2 frames of reference under one SeriesInstanceUID)"
    copies = write_series(raw / "copied" / "a", volume[:3])
    shutil.copytree(raw / "copied" / "a", raw / "copied" / "b")
    del copies
    expected["copied"] = "duplicate copy of one slice"
    write_series(raw / "truncated", volume)
    target = raw / "truncated" / "IM0003"
    target.write_bytes(target.read_bytes()[:-50])
    expected["truncated"] = "IM0003: truncated file"
    write_series(raw / "unlabelled", volume)
    expected["unlabelled"] = "no label for series unlabelled: expected labels/unlabelled.nii.gz"
    write_series(raw / "offgrid", volume)
    save_nifti(np.zeros((10, 12, 6), np.uint8), raw / "labels" / "offgrid.nii.gz", np.diag([0.7, 0.8, 2.5, 1]))
    expected["labels/offgrid"] = ".nii.gz: label geometry differs from the image's beyond 0.0001: origin"
    write_series(raw / "Jane_scans", volume)
    expected["Jane_scans"] = "folder name carries the patient's name or ID"
    (raw / "junk").mkdir()
    (raw / "junk" / "broken").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    expected["junk/broken"] = "junk/broken: unreadable DICOM header"
    return expected


def test_every_bad_dicom_series_is_named_and_good_series_land(tmp_path):
    expected = make_dicom_inbox(tmp_path / "raw")
    manifest, results = ingest_dataset(tmp_path / "raw", tmp_path / "out", DataConfig(
        instance_labels=False, label_names=LABELS, source="dicom", dicom_case_id="folder"))
    assert [c["case_id"] for c in manifest["cases"]] == ["good"]
    rejected = [r.reason for r in results if not r.accepted]
    for folder, why in expected.items():
        shown = folder.replace("Jane_scans", "<redacted>")
        assert any(why in reason and reason.startswith(shown) for reason in rejected), (folder, "\n".join(rejected))
    assert len(rejected) == len(expected) == len(set(rejected))
