"""Issue #15 end to end on real anatomy with hospital-like mixed spacings: plan, resample, train, infer back.

The MNI152 T1 and its grey/white-matter segmentation (a real brain MRI, ``tests/data/mni152``) are cut into
cases the way a hospital archive holds them: thick slices of different thickness (every 2nd to 4th slice:
4–8 mm apart at 2 mm in-plane), different fields of view, some flipped in the header. The plan must pick a
thick-slice topology, preprocessing must keep every tissue class of every case, and the masks inference
writes must lie exactly on each test image's own grid (shape and affine), whatever its spacing.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from tasks.config import load_params
from tests.pipeline.test_real_mni import FIXTURE, write_dataset_json

pytestmark = pytest.mark.slow

#: (z step, x/y window start, flip x in the header): 4–8 mm slices, shifted fields of view.
TRAIN_CUTS = [(2, 10, False), (3, 14, True), (4, 12, False), (3, 8, False), (2, 16, True), (4, 10, False),
              (3, 12, False), (2, 8, False)]
TEST_CUTS = [(3, 11, True), (4, 9, False)]


def cut(image: np.ndarray, label: np.ndarray, affine: np.ndarray, step: int, start: int,
        flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ``step``-th slice of a 72×80 in-plane window from ``start``: a thick-slice acquisition."""
    window = (slice(start, start + 72), slice(start + 10, start + 90), slice(10, 86, step))
    out_affine = affine.copy()
    out_affine[:3, 2] *= step
    out_affine[:3, 3] = affine[:3, :3] @ np.array([start, start + 10, 10]) + affine[:3, 3]
    image, label = image[window], label[window]
    if flip:  # the same anatomy stored left-right flipped, with the header saying so
        image, label = image[::-1], label[::-1]
        out_affine[:3, 3] += out_affine[:3, 0] * (image.shape[0] - 1)
        out_affine[:3, 0] *= -1
    return image, label, out_affine


def write_thick_slice_dataset(raw: Path) -> dict[str, Path]:
    t1, tissue = nib.load(str(FIXTURE / "t1_2mm.nii.gz")), nib.load(str(FIXTURE / "tissue_2mm.nii.gz"))
    image, label = np.asarray(t1.dataobj), np.asarray(tissue.dataobj)
    write_dataset_json(raw, len(TRAIN_CUTS))
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / folder).mkdir(parents=True, exist_ok=True)
    for i, (step, start, flip) in enumerate(TRAIN_CUTS):
        data, seg, affine = cut(image, label, t1.affine, step, start, flip)
        nib.save(nib.Nifti1Image(data, affine), str(raw / "imagesTr" / f"brain_{i:02d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(seg, affine), str(raw / "labelsTr" / f"brain_{i:02d}.nii.gz"))
    tests = {}
    for i, (step, start, flip) in enumerate(TEST_CUTS):
        data, _, affine = cut(image, label, t1.affine, step, start, flip)
        tests[f"new_{i}"] = raw / "imagesTs" / f"new_{i}_0000.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(tests[f"new_{i}"]))
    return tests


def test_thick_slice_mri_is_planned_resampled_and_answered_on_each_native_grid(tmp_path: Path,
                                                                               prefect_harness) -> None:
    from flows.infer import infer_flow
    from flows.ingest import ingest_flow
    from flows.preprocess import preprocess_flow
    from tasks.preprocess.case_store import open_case
    from tasks.training.trainer import train_model

    root = tmp_path / "thick"
    tests = write_thick_slice_dataset(root / "data")
    settings = {
        "data": {"val_fraction": 0.15, "test_fraction": 0.15},
        "preprocess": {"weight_maps": False},
        "model": {"features": [4, 8, 16]},
        "train": {"epochs": 1, "max_steps_per_epoch": 2, "memory_budget_gb": 0.05, "overlay_every": 0,
                  "loss": "ce_dice", "augment": {"enabled": False}},
        "tracking": {"system_metrics": False},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
    params = load_params(root / "params.yaml")
    assert ingest_flow(root=str(root))["accepted"] == len(TRAIN_CUTS)
    preprocess_flow(root=str(root))
    plan = json.loads((root / "outputs" / "preprocessed" / "plan.json").read_text())
    spacing = plan["target_spacing"]
    assert spacing[:2] == pytest.approx([2.0, 2.0]) and spacing[2] == pytest.approx(6.0)  # median of 4, 6, 8 mm
    assert plan["network"]["strides"][0] == [2, 2, 1] and plan["network"]["kernel_sizes"][0] == [3, 3, 1]

    # Resampling keeps every class each case has (grey and white matter in every cut), on the target grid.
    manifest = json.loads((root / "outputs" / "dataset" / "dataset.json").read_text())
    for case in manifest["cases"]:
        native = np.asarray(nib.load(str(root / "outputs" / "dataset" / case["files"]["label"])).dataobj)
        stored = open_case(root / "outputs" / "preprocessed", case["case_id"])["label"]
        assert set(np.unique(stored).tolist()) == set(np.unique(native).tolist()), case["case_id"]
        expected = [round(n * s / t) for n, s, t in zip(case["shape"][:3], case["spacing"], spacing, strict=True)]
        assert list(stored.shape[1:]) == expected, case["case_id"]

    result = train_model(params, root)
    infer_flow(root=str(root), model=result.checkpoint, input="data/imagesTs", output="predictions")
    for case_id, source in tests.items():
        given, mask = nib.load(str(source)), nib.load(str(root / "predictions" / f"{case_id}.nii.gz"))
        assert mask.shape == given.shape, case_id
        assert np.array_equal(mask.affine, given.affine), case_id
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2}
