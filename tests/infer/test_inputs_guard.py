"""Inference reads NIfTI through ingest's reader: a header is checked before its voxels are allocated."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np

from tasks.inference.batch import run_batch
from tests.infer.helpers import ThresholdNet, blobs, plan_for, save_nifti, settings

SHAPE = (8, 8, 8)


def test_header_lies_are_refused_by_name_and_the_rest_of_the_batch_is_segmented(tmp_path):
    inbox = tmp_path / "in"
    image = (blobs(SHAPE, seed=4) * 100).astype(np.float32)
    save_nifti(image, inbox / "good.nii.gz")
    save_nifti(image.reshape(*SHAPE, 1, 1), inbox / "vector.nii.gz")  # X×Y×Z×1×C: accepted, as before
    save_nifti(image, inbox / "short.nii")  # header says 8×8×8 float32; the file ends 100 bytes early
    (inbox / "short.nii").write_bytes((inbox / "short.nii").read_bytes()[:-100])
    big = nib.Nifti1Header()  # claims 200³ float32 (32 MB) but holds 4 bytes: refused before reading
    big.set_data_shape((200, 200, 200))
    big.set_data_dtype(np.float32)
    with gzip.open(inbox / "big.nii.gz", "wb") as handle:
        handle.write(big.binaryblock + b"\0" * 4)

    model = ThresholdNet(3, level=50.0)
    outcomes = run_batch(inbox, tmp_path / "out", settings(max_voxels=10_000), model, plan_for(3, list(SHAPE)))
    by_id = {o.case_id: o for o in outcomes}

    assert by_id["short"].status == "failed"
    assert by_id["short"].error.startswith("short.nii: truncated image file (")
    assert "header needs" in by_id["short"].error and by_id["short"].error.endswith("(CaseRejected)")
    assert by_id["big"].status == "failed"
    assert by_id["big"].error.startswith(
        "big.nii.gz: header claims image shape (200, 200, 200), refused (limit 10000 voxels)")
    for case in ("good", "vector"):
        assert by_id[case].status == "done", by_id[case].error
        mask = nib.load(str(tmp_path / "out" / f"{case}.nii.gz"))
        assert mask.shape[:3] == SHAPE
        np.testing.assert_array_equal(np.asanyarray(mask.dataobj).reshape(SHAPE), (image > 50).astype(np.uint8))
    assert len(model.seen) == 2  # only the good cases reached the model
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["done"] == 2 and sorted(f["case_id"] for f in summary["failed_cases"]) == ["big", "short"]
