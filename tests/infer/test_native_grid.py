"""Inference on the plan's target spacing, answered on the input's own grid (issue #15)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tasks.common.plan import Plan
from tasks.inference.inputs import discover_cases
from tasks.inference.native_grid import model_space_spacing, predict_native_labels
from tasks.inference.segment import segment_case
from tests.infer.helpers import ThresholdNet, oblique_affine, save_nifti, settings


def thick_plan(target: tuple[float, float, float]) -> Plan:
    return Plan.model_validate({
        "spatial_dims": 3, "in_channels": 1, "num_classes": 2, "label_names": {"background": 0, "lesion": 1},
        "patch_size": [16, 16, 8], "normalization": {"channels": [{"scheme": "none"}]},
        "target_spacing": list(target), "split": {"train": [], "val": [], "test": []},
        "network": {"name": "unet", "features": [4, 8, 16], "norm": "batch"}})


def slab_image(shape: tuple[int, int, int]) -> np.ndarray:
    """Foreground in odd slices only, at every (x, y): what a 2× thicker grid cannot tell apart."""
    image = np.zeros(shape, np.float32)
    image[4:12, 4:12, 1::2] = 1.0
    return image


def test_the_network_sees_the_target_grid_and_the_answer_is_on_the_native_one() -> None:
    """2 mm slices, a plan at 4 mm: the model sees every other slice (nearest along the thick axis), and its
    probabilities come back by nearest too, so both native slices of a pair get the same label. Without the
    resampling the labels would follow the native slices (foreground in odd slices only)."""
    plan = thick_plan((1.0, 1.0, 4.0))
    image = slab_image((16, 16, 12))[None]
    labels = predict_native_labels(ThresholdNet(3, level=0.5).eval(), plan, image, (1.0, 1.0, 2.0))
    assert labels.shape == (16, 16, 12)
    assert np.array_equal(labels[..., 0::2], labels[..., 1::2])
    assert labels.any() and not np.array_equal(labels, (image[0] > 0.5).astype(np.uint8))
    # On the plan's spacing already: nothing is resampled, the labels are the threshold itself.
    same = predict_native_labels(ThresholdNet(3, level=0.5).eval(), thick_plan((1.0, 1.0, 2.0)), image,
                                 (1.0, 1.0, 2.0))
    assert np.array_equal(same, (image[0] > 0.5).astype(np.uint8))


def test_masks_land_on_an_oblique_anisotropic_input_grid_exactly(tmp_path: Path) -> None:
    """A flipped, rotated 0.7 × 1.3 × 3.1 mm input and a 1 mm plan: the mask has the input's shape and affine."""
    affine = oblique_affine()
    image = np.zeros((20, 14, 9), np.float32)
    image[5:15, 3:11, 2:7] = 1.0
    source = save_nifti(image, tmp_path / "inbox" / "study.nii.gz", affine)
    plan = thick_plan((1.0, 1.0, 1.0))
    assert sorted(np.round(model_space_spacing(affine), 4)) == [0.7, 1.3, 3.1]
    (case,), _problems = discover_cases(tmp_path / "inbox")
    report = segment_case(ThresholdNet(3, level=0.5).eval(), plan, case, tmp_path / "out", settings())
    mask = nib.load(str(tmp_path / "out" / "study.nii.gz"))
    assert mask.shape == image.shape and np.array_equal(mask.affine, nib.load(str(source)).affine)
    written = np.asarray(mask.dataobj)
    inside = written[image > 0.5].mean()
    outside = written[image < 0.5].mean()
    assert inside > 0.9 and outside < 0.1, (inside, outside)
    assert report["foreground_voxels"] == int(written.sum())
