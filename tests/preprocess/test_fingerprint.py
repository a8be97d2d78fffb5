"""The dataset fingerprint and nnU-Net v2's target spacing (issue #15, first step: recorded in the plan only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.common.plan import Plan
from tasks.config import validate_params
from tasks.preprocess.fingerprint import choose_target_spacing, plan_spacing
from tasks.preprocess.planning import make_plan


def manifest_of(spacings: list[list[float]], shapes: list[list[int]]) -> dict:
    """A manifest holding only what planning reads: shapes, spacings, channels, labels."""
    cases = [{"case_id": f"c{i:02d}", "shape": shape, "spacing": spacing, "channels": 1, "files": {}}
             for i, (spacing, shape) in enumerate(zip(spacings, shapes, strict=True))]
    return {"labels": {"background": 0, "organ": 1}, "modality": "MR", "cases": cases}


def arrays(manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([c["spacing"] for c in manifest["cases"]], dtype=float),
            np.array([c["shape"] for c in manifest["cases"]]))


def anisotropic() -> dict:
    """In-plane 0.7 mm over 512², slices 2.5–6.5 mm, 24–60 of them (the prostate/abdomen MR picture)."""
    z_spacings = [2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5]
    slices = [60, 55, 50, 45, 40, 35, 30, 27, 24]
    return manifest_of([[0.7, 0.7, z] for z in z_spacings], [[512, 512, n] for n in slices])


def test_isotropic_1mm_cases_give_1mm():
    manifest = manifest_of([[1.0, 1.0, 1.0]] * 4, [[64, 64, 64]] * 4)
    assert choose_target_spacing(*arrays(manifest)) == [1.0, 1.0, 1.0]


def test_mixed_spacings_give_per_axis_medians():
    spacings = [[0.8, 0.9, 1.0], [1.0, 1.1, 1.5], [1.2, 1.3, 2.0], [0.9, 1.0, 1.2]]
    manifest = manifest_of(spacings, [[96, 96, 80]] * 4)
    assert choose_target_spacing(*arrays(manifest)) == pytest.approx(np.median(spacings, axis=0).tolist())


def test_anisotropic_coarse_axis_takes_its_10th_percentile_not_the_median():
    manifest = anisotropic()
    spacings, shapes = arrays(manifest)
    target = choose_target_spacing(spacings, shapes)
    assert target[:2] == pytest.approx([0.7, 0.7])
    assert target[2] == pytest.approx(float(np.percentile(spacings[:, 2], 10)))
    assert target[2] != pytest.approx(float(np.median(spacings[:, 2])))


def test_anisotropic_spacing_without_anisotropic_voxel_counts_keeps_the_median():
    manifest = anisotropic()
    for case in manifest["cases"]:
        case["shape"] = [512, 512, 400]  # as many slices as in-plane voxels: not nnU-Net's anisotropic case
    spacings, shapes = arrays(manifest)
    assert choose_target_spacing(spacings, shapes)[2] == pytest.approx(float(np.median(spacings[:, 2])))


def test_coarse_axis_never_finer_than_the_others():
    manifest = manifest_of([[0.7, 0.7, 4.0]] * 8 + [[0.7, 0.7, 0.5]] * 2, [[512, 512, 30]] * 10)
    target = choose_target_spacing(*arrays(manifest))
    assert target[2] == pytest.approx(0.7 + 1e-5)


def test_2d_keeps_the_median_z_spacing():
    manifest = manifest_of([[0.5, 0.5, 5.0], [0.5, 0.5, 7.0], [0.5, 0.5, 9.0]], [[256, 256, 1]] * 3)
    assert choose_target_spacing(*arrays(manifest)) == pytest.approx([0.5, 0.5, 7.0])


def test_make_plan_records_target_spacing_and_fingerprint_and_the_override_wins():
    manifest = anisotropic()
    spacings, _ = arrays(manifest)
    params = validate_params({"model": {"features": [4, 8]}, "train": {"patch_size": [32, 32, 16]}})
    plan = make_plan(manifest, params.data, params.preprocess, params.model, params.train, [{"n": 0}])
    assert plan.target_spacing == pytest.approx((0.7, 0.7, float(np.percentile(spacings[:, 2], 10))))
    assert plan.fingerprint["num_cases"] == 9
    assert plan.fingerprint["spacing"]["max"] == pytest.approx([0.7, 0.7, 6.5])
    assert plan.fingerprint["median_shape"] == [512.0, 512.0, 40.0]
    assert Plan.model_validate_json(json.dumps(plan.to_json())) == plan

    override = validate_params({**params.model_dump(), "preprocess": {"target_spacing": [1.0, 1.0, 3.0]}})
    plan = make_plan(manifest, override.data, override.preprocess, override.model, override.train, [{"n": 0}])
    assert plan.target_spacing == (1.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="preprocess.target_spacing"):
        plan_spacing(manifest, (1.0, 0.0, 3.0))


def test_an_old_plan_without_the_fields_still_loads(tmp_path: Path):
    old = {"version": 1, "spatial_dims": 2, "in_channels": 1, "num_classes": 2,
           "label_names": {"background": 0, "cell": 1}, "normalization": {"channels": [{"scheme": "zscore"}]},
           "patch_size": [48, 48], "weight_maps": False,
           "split": {"train": ["a"], "val": ["b"], "test": []},
           "network": {"name": "unet", "features": [16, 32], "norm": "batch", "options": {}}}
    (tmp_path / "plan.json").write_text(json.dumps(old))
    plan = Plan.read(tmp_path / "plan.json")
    assert plan.target_spacing is None and plan.fingerprint is None


def test_a_version_1_plan_is_not_resampled(tmp_path: Path):
    """Version 1 recorded a target spacing without resampling the cases: its models must see native grids."""
    old = {"version": 1, "spatial_dims": 3, "in_channels": 1, "num_classes": 2,
           "label_names": {"background": 0, "organ": 1}, "normalization": {"channels": [{"scheme": "zscore"}]},
           "patch_size": [32, 32, 16], "target_spacing": [0.7, 0.7, 3.0],
           "split": {"train": ["a"], "val": ["b"], "test": []},
           "network": {"name": "unet", "features": [16, 32], "norm": "batch", "options": {}}}
    (tmp_path / "plan.json").write_text(json.dumps(old))
    assert Plan.read(tmp_path / "plan.json").target_spacing is None
    (tmp_path / "plan.json").write_text(json.dumps({**old, "version": 2}))
    assert Plan.read(tmp_path / "plan.json").target_spacing == (0.7, 0.7, 3.0)
